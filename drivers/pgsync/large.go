package pgsync

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/edgesync/edgesync/edge"
)

// payloadTable holds the envelopes too large for NOTIFY.
const payloadTable = "edgesync_payloads"

// lockMigrations takes the transaction-level advisory lock that serialises
// edgesync's migrations, so that instances starting at once do not trip over
// each other's CREATE … IF NOT EXISTS. Its key is "edgesync" in ASCII.
const lockMigrations = "SELECT pg_advisory_xact_lock(7306078180928482915);\n"

// payloadSchema creates the payload table. The simple protocol runs its
// statements in one implicit transaction, which holds the advisory lock until
// they are done.
const payloadSchema = lockMigrations + `
CREATE TABLE IF NOT EXISTS edgesync_payloads (
	id bigserial PRIMARY KEY,
	channel text NOT NULL,
	body text NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS edgesync_payloads_channel_created_at ON edgesync_payloads (channel, created_at);`

// Migrate creates the table edgesync_payloads, which holds the messages too
// large for NOTIFY, unless it exists. The first large publish does it too;
// call Migrate beforehand, as a role that may create tables in the schema,
// when the roles of the instances may not.
func Migrate(ctx context.Context, pool *pgxpool.Pool) error {
	if _, err := pool.Exec(ctx, payloadSchema); err != nil {
		return fmt.Errorf("pgsync: creating table %s: %w", payloadTable, err)
	}
	return nil
}

// ensureTable makes sure the payload table exists before a large message of
// size bytes is stored. It checks first: CREATE TABLE IF NOT EXISTS fails
// for a role without CREATE even when the table is there.
func (d *driver) ensureTable(ctx context.Context, size int) error {
	d.tableMu.Lock()
	defer d.tableMu.Unlock()
	if d.tableReady {
		return nil
	}
	var exists bool
	err := d.pool.QueryRow(ctx, "SELECT to_regclass('"+payloadTable+"') IS NOT NULL").Scan(&exists)
	if err == nil && !exists {
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
			return fmt.Errorf("%s; %s: %w (run pgsync.Migrate once as a role that may create tables in the schema, or GRANT CREATE ON SCHEMA to this role; "+
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

// storeSQL stores one large envelope ($2) and notifies its reference: $3 is
// the reference up to the row id. Postgres delivers the notification when the
// row is committed, so receivers find it.
const storeSQL = `WITH stored AS (INSERT INTO edgesync_payloads (channel, body) VALUES ($1, $2) RETURNING id)
SELECT pg_notify($1, $3::text || id || '}') FROM ` + asyncCommit + `, stored`

// cleanupIfDue deletes the channel's old large messages, at most once per
// half retention period. A failure is reported, not returned: the message
// was relayed.
func (d *driver) cleanupIfDue(ctx context.Context) {
	d.tableMu.Lock()
	now := time.Now()
	due := now.Sub(d.lastCleanup) >= d.retention/2
	if due {
		d.lastCleanup = now
	}
	d.tableMu.Unlock()
	if !due {
		return
	}
	if _, err := d.cleanup(ctx); err != nil {
		d.inst.Report(err, edge.StagePublish)
	}
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
