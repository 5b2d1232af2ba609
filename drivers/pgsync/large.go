package pgsync

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/envelope"
)

// payloadTable holds the envelopes too large for NOTIFY.
const payloadTable = "edgesync_payloads"

// lockMigrations takes the transaction-level advisory lock that serialises
// edgesync's migrations, so that instances starting at once do not trip over
// each other's CREATE … IF NOT EXISTS. Its key is "edgesync" in ASCII.
const lockMigrations = "SELECT pg_advisory_xact_lock(7306078180928482915);\n"

// payloadSchema creates the payload table, or adds to one of an earlier
// version the column token. The simple protocol runs its statements in one
// implicit transaction, which holds the advisory lock until they are done.
const payloadSchema = lockMigrations + `
CREATE TABLE IF NOT EXISTS edgesync_payloads (
	id bigserial PRIMARY KEY,
	channel text NOT NULL,
	body text NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now(),
	token text
);
ALTER TABLE edgesync_payloads ADD COLUMN IF NOT EXISTS token text;
CREATE INDEX IF NOT EXISTS edgesync_payloads_channel_created_at ON edgesync_payloads (channel, created_at);`

// tableReadySQL tells whether the payload table exists with its token column.
const tableReadySQL = `SELECT EXISTS (SELECT 1 FROM pg_attribute
WHERE attrelid = to_regclass('` + payloadTable + `') AND attname = 'token' AND NOT attisdropped)`

// Migrate creates the table edgesync_payloads, which holds the messages too
// large for NOTIFY, unless it exists, and upgrades a table of an earlier
// version (it adds the column token). The first large publish does it too;
// call Migrate beforehand, as a role that may create tables in the schema
// (or, to upgrade, the table's owner), when the roles of the instances may
// not.
func Migrate(ctx context.Context, pool *pgxpool.Pool) error {
	if _, err := pool.Exec(ctx, payloadSchema); err != nil {
		return fmt.Errorf("pgsync: creating table %s: %w", payloadTable, err)
	}
	return nil
}

// ensureTable makes sure the payload table exists, with its token column,
// before a large message of size bytes is stored. It checks first: CREATE
// TABLE IF NOT EXISTS fails for a role without CREATE even when the table is
// there.
func (d *driver) ensureTable(ctx context.Context, size int) error {
	d.tableMu.Lock()
	defer d.tableMu.Unlock()
	if d.tableReady {
		return nil
	}
	var ready bool
	err := d.pool.QueryRow(ctx, tableReadySQL).Scan(&ready)
	if err == nil && !ready {
		err = Migrate(ctx, d.pool)
	}
	if err != nil {
		return fmt.Errorf("pgsync: publish to channel %q: %w", d.channel, explainLarge(err, "creating table "+payloadTable+" for it", size, true))
	}
	d.tableReady = true
	return nil
}

// explainLarge says, for an error met while storing a message of size bytes,
// why the table is needed and, when the role lacks a privilege, how to grant
// it. Unless always is set, errors that the table has nothing to do with (a
// lost connection) are returned as they are.
func explainLarge(err error, doing string, size int, always bool) error {
	why := fmt.Sprintf("a message of %d bytes exceeds the NOTIFY payload limit (%d bytes) and must be stored in table %s",
		size, NotifyPayloadLimit, payloadTable)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "42501": // insufficient_privilege
			return fmt.Errorf("%s; %s: %w (run pgsync.Migrate once as a role that may create tables in the schema, or as the table's owner to upgrade it, or GRANT CREATE ON SCHEMA to this role; "+
				"this role needs INSERT, SELECT and DELETE on %s and USAGE on its sequence)", why, doing, err, payloadTable)
		case "25006": // read_only_sql_transaction
			return fmt.Errorf("%s; %s: %w (the server or session is read-only: connect to the primary, and run pgsync.Migrate there once)", why, doing, err)
		case "42P01": // undefined_table: dropped since it was created
			always = true
		}
	}
	if !always {
		return err
	}
	return fmt.Errorf("%s; %s: %w", why, doing, err)
}

// Large messages are stored with their reference, and read back by row id and
// token.
const (
	// idsSQL reserves the row ids of $1 large messages, so that their
	// references can be written, and signed, before they are stored.
	idsSQL = "SELECT nextval(pg_get_serial_sequence('" + payloadTable + "', 'id')) FROM generate_series(1, $1)"
	// storeSQL stores one large envelope ($3) of channel $2 as row $1 with
	// token $4 and notifies its reference $5 on notification channel $6
	// (the channel, or in a routed cluster a bucket channel). Postgres
	// delivers the notification when the row is committed, so receivers
	// find it.
	storeSQL = `WITH stored AS (INSERT INTO edgesync_payloads (id, channel, body, token) VALUES ($1, $2, $3, $4) RETURNING id)
SELECT pg_notify($6, $5) FROM ` + asyncCommit + `, stored`
	// resolveSQL reads row $1 of channel $2 if its token is $3, with its
	// size, its body unless it exceeds $4 bytes, and whether it is older
	// than $5 microseconds.
	resolveSQL = `SELECT octet_length(body), CASE WHEN octet_length(body) <= $4 THEN body END,
	created_at < now() - $5::bigint * interval '1 microsecond'
FROM edgesync_payloads WHERE id = $1 AND channel = $2 AND token = $3`
)

// tokenBytes is how many random bytes make a token: 128 bits.
const tokenBytes = 16

// tokenLen is the length of a token as a reference carries it, unpadded
// URL-safe base64.
var tokenLen = base64.RawURLEncoding.EncodedLen(tokenBytes)

// reference is the notification that stands for a large message:
//
//	{"edgesync":"ref","id":"<instance id>","ref":<row id>,"token":"<token>"}
//
// followed, in a signed cluster, by the member "sig" (envelope.Signer).
type reference struct {
	Edgesync string `json:"edgesync"`
	ID       string `json:"id"`
	Ref      int64  `json:"ref"`
	Token    string `json:"token"`
}

// refMarker begins every reference.
const refMarker = `{"edgesync":"ref",`

// errReference is wrapped, with envelope.ErrMalformed, by the errors of
// parseReference.
var errReference = errors.New("not a valid large message reference")

// parseReference parses the reference raw. It does not check its signature.
func parseReference(raw []byte) (reference, error) {
	var ref reference
	if err := json.Unmarshal(raw, &ref); err != nil {
		return reference{}, fmt.Errorf("%w: %w: %v", envelope.ErrMalformed, errReference, err)
	}
	switch {
	case ref.Edgesync != "ref":
		return reference{}, fmt.Errorf("%w: %w: \"edgesync\" is not \"ref\"", envelope.ErrMalformed, errReference)
	case ref.Ref <= 0:
		return reference{}, fmt.Errorf("%w: %w: no positive row id", envelope.ErrMalformed, errReference)
	case !validToken(ref.Token):
		return reference{}, fmt.Errorf("%w: %w: no token of %d bits", envelope.ErrMalformed, errReference, 8*tokenBytes)
	}
	return ref, nil
}

// validToken reports whether tok is a token as newToken writes it.
func validToken(tok string) bool {
	if len(tok) != tokenLen { // before Decode, which needs room for all of tok
		return false
	}
	var b [tokenBytes]byte
	n, err := base64.RawURLEncoding.Strict().Decode(b[:], []byte(tok))
	return err == nil && n == tokenBytes
}

// newToken returns a new random token.
func newToken() string {
	var b [tokenBytes]byte
	rand.Read(b[:]) // never fails
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// appendReference appends the reference to row ref with token, signed when
// the cluster is, to dst.
func (d *driver) appendReference(dst []byte, ref int64, token string) []byte {
	start := len(dst)
	dst = append(dst, d.refPrefix...)
	dst = strconv.AppendInt(dst, ref, 10)
	dst = append(dst, `,"token":"`...)
	dst = append(dst, token...)
	dst = append(dst, `"}`...)
	dst, _ = d.signer.Sign(dst, start) // an object of members: never fails
	return dst
}

// queueLarge reserves the row ids of the large envelopes and queues, in b,
// the statements that store them and notify their references, each on its
// channel in to.
func (d *driver) queueLarge(ctx context.Context, b *pgx.Batch, large [][]byte, to []string) error {
	rows, err := d.pool.Query(ctx, idsSQL, len(large))
	if err != nil {
		return err
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return err
	}
	if len(ids) != len(large) {
		return fmt.Errorf("reserved %d row ids for %d messages", len(ids), len(large))
	}
	for i, env := range large {
		token := newToken()
		b.Queue(storeSQL, ids[i], d.channel, env, token, d.appendReference(nil, ids[i], token), to[i])
	}
	return nil
}

// Why a reference is not resolved.
var (
	// errNoPayload: no row has the reference's id and token.
	errNoPayload = errors.New("no stored body has its id and token: it is gone (older than LargePayloadRetention), or the reference is forged")
	// errExpired: the row is older than the retention period.
	errExpired = errors.New("its stored body is older than LargePayloadRetention")
	// errReplayed: the reference was resolved before.
	errReplayed = errors.New("it was delivered before: the reference is replayed")
)

// resolveReference returns the envelope that the reference raw stands for,
// read on the listening connection, or nil when raw is the reference of this
// instance's own message. It verifies the reference's signature in a signed
// cluster, and refuses a reference resolved before, one without the token of
// its row, and a row older than the retention period or larger than
// MaxMessageBytes.
func (d *driver) resolveReference(ctx context.Context, conn *pgx.Conn, raw []byte) ([]byte, error) {
	if err := d.signer.Verify(raw); err != nil {
		return nil, fmt.Errorf("large message reference: %w", err)
	}
	ref, err := parseReference(raw)
	if err != nil {
		return nil, err
	}
	if ref.ID == d.inst.ID {
		return nil, nil // our own echo: not worth reading
	}
	now := time.Now()
	if seen, ok := d.resolved[ref.Ref]; ok {
		if seen.token != ref.Token {
			return nil, fmt.Errorf("large message %d: %w", ref.Ref, errNoPayload)
		}
		return nil, fmt.Errorf("large message %d: %w", ref.Ref, errReplayed)
	}
	ctx, cancel := context.WithTimeout(ctx, resolveTimeout)
	defer cancel()
	var (
		size    int
		body    []byte
		expired bool
	)
	err = conn.QueryRow(ctx, resolveSQL, ref.Ref, d.channel, ref.Token, d.maxBytes, d.retention.Microseconds()).Scan(&size, &body, &expired)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil, fmt.Errorf("large message %d: %w", ref.Ref, errNoPayload)
	case err != nil:
		return nil, fmt.Errorf("large message %d: reading %s: %w", ref.Ref, payloadTable, err)
	case expired:
		return nil, fmt.Errorf("large message %d: %w", ref.Ref, errExpired)
	case body == nil:
		return nil, fmt.Errorf("large message %d: %d bytes is more than MaxMessageBytes (%d)", ref.Ref, size, d.maxBytes)
	}
	d.remember(ref, now)
	return body, nil
}

// resolved is a reference that the listener has resolved.
type resolved struct {
	token string
	at    time.Time
}

// remember notes that ref was resolved at now, and forgets the references
// resolved more than two retention periods ago, whose rows the server
// refuses anyway.
func (d *driver) remember(ref reference, now time.Time) {
	if d.resolved == nil {
		d.resolved = make(map[int64]resolved)
	}
	if now.Sub(d.resolvedPruned) >= d.retention {
		for id, r := range d.resolved {
			if now.Sub(r.at) > 2*d.retention {
				delete(d.resolved, id)
			}
		}
		d.resolvedPruned = now
	}
	d.resolved[ref.Ref] = resolved{token: ref.Token, at: now}
}

// scheduleCleanup makes sure that the rows this instance has stored are
// deleted once they are older than the retention period: it starts a timer
// for the first, and the timer runs again as long as the instance stores.
func (d *driver) scheduleCleanup() {
	d.tableMu.Lock()
	defer d.tableMu.Unlock()
	d.lastStored = time.Now()
	if d.cleanupTimer == nil && !d.cleanupStopped {
		d.cleanupTimer = time.AfterFunc(d.retention+cleanupSlack, d.runCleanup)
	}
}

// cleanupSlack is how long after a row is due a cleanup runs.
const cleanupSlack = 10 * time.Millisecond

// runCleanup deletes the channel's expired rows, and runs again after the
// retention period when this instance has stored rows since it was started.
// A failure is reported, not returned: the message was relayed.
func (d *driver) runCleanup() {
	d.tableMu.Lock()
	if d.cleanupStopped {
		d.tableMu.Unlock()
		return
	}
	d.cleanupRunning.Add(1)
	d.tableMu.Unlock()
	defer d.cleanupRunning.Done()

	ctx, cancel := context.WithTimeout(d.cleanupCtx, resolveTimeout)
	n, err := d.cleanup(ctx)
	cancel()
	d.tableMu.Lock()
	defer d.tableMu.Unlock()
	if d.cleanupStopped {
		return
	}
	if err != nil {
		d.inst.Report(err, edge.StagePublish)
	}
	if d.onCleanup != nil {
		d.onCleanup(n, err)
	}
	if due := time.Until(d.lastStored.Add(d.retention + cleanupSlack)); due > 0 {
		d.cleanupTimer.Reset(due)
	} else {
		d.cleanupTimer = nil
	}
}

// stopCleanup stops the cleanup timer and waits for a cleanup under way.
func (d *driver) stopCleanup() {
	d.tableMu.Lock()
	d.cleanupStopped = true
	if d.cleanupTimer != nil {
		d.cleanupTimer.Stop()
	}
	d.tableMu.Unlock()
	d.cleanupCancel()
	d.cleanupRunning.Wait()
}

// cleanup deletes the channel's large messages older than the retention
// period and returns how many it deleted.
func (d *driver) cleanup(ctx context.Context) (int64, error) {
	tag, err := d.pool.Exec(ctx,
		"DELETE FROM edgesync_payloads WHERE channel = $1 AND created_at < now() - $2::bigint * interval '1 microsecond'",
		d.channel, d.retention.Microseconds())
	if err != nil {
		return 0, fmt.Errorf("pgsync: deleting large messages older than %v from %s: %w", d.retention, payloadTable, err)
	}
	return tag.RowsAffected(), nil
}
