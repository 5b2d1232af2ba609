package pgsync

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/edgesync/edgesync/edge"
)

// DefaultTTL is how long a Registry keeps a connection added with a zero
// ExpiresAt: the longest an API Gateway WebSocket connection lives.
const DefaultTTL = edge.DefaultConnTTL

// Registry tuning.
const (
	subscribersPage = 1000        // ids read per query by Subscribers
	pruneInterval   = time.Minute // least time between two prunes by one Registry
	pruneBatch      = 1000        // expired connections deleted per prune, at most
)

// RegistryOptions configure a Registry.
type RegistryOptions struct {
	// Pool runs the Registry's queries. Required. It stays the user's.
	Pool *pgxpool.Pool

	// Channel scopes the Registry: Registries with different channels
	// share the tables but never see each other's connections. Use the
	// backplane's channel name; "" is a scope like any other.
	Channel string

	// TTL is the lifetime of a connection added with a zero ExpiresAt.
	// 0 means DefaultTTL.
	TTL time.Duration
}

// Registry is an edge.Registry kept in Postgres, in the tables
// edgesync_registry_conns and edgesync_registry_subs. A connection whose
// ExpiresAt has passed, by the server's clock, behaves as one that was
// removed; Add deletes such rows from time to time. A Registry is safe for
// concurrent use.
//
// Ids, namespaces, topics and the scope are kept as bytes (bytea), exactly as
// given: any string is accepted, including NUL bytes, invalid UTF-8 and names
// of any length, which a text column or an index on the names could not hold.
// Rows are found by the SHA-256 digests of the names, which the indexes hold.
type Registry struct {
	pool     *pgxpool.Pool
	scope    []byte // the digest of RegistryOptions.Channel
	ttl      time.Duration
	pageSize int

	mu        sync.Mutex
	migrated  bool
	lastPrune time.Time
}

var _ edge.Registry = (*Registry)(nil)

// NewRegistry returns a Registry on opts.Pool. It does not touch the
// database: the tables are created by Migrate or on first use.
func NewRegistry(opts RegistryOptions) (*Registry, error) {
	if opts.Pool == nil {
		return nil, errors.New("pgsync: RegistryOptions.Pool is required")
	}
	r := &Registry{pool: opts.Pool, scope: key(opts.Channel), ttl: opts.TTL, pageSize: subscribersPage}
	if r.ttl <= 0 {
		r.ttl = DefaultTTL
	}
	return r, nil
}

// registrySchema creates the Registry's tables in one implicit transaction
// that holds the migration lock. Names are bytea, compared bytewise, as Go
// compares strings; the columns ending in _key hold their SHA-256 digests,
// so that an index entry stays small however long the name.
const registrySchema = lockMigrations + `
CREATE TABLE IF NOT EXISTS edgesync_registry_conns (
	scope_key bytea NOT NULL,
	id_key bytea NOT NULL,
	id bytea NOT NULL,
	namespace bytea NOT NULL,
	namespace_key bytea NOT NULL,
	attrs json,
	connected_at timestamptz NOT NULL,
	expires_at timestamptz NOT NULL,
	PRIMARY KEY (scope_key, id_key)
);
CREATE INDEX IF NOT EXISTS edgesync_registry_conns_expires_at ON edgesync_registry_conns (expires_at);
CREATE TABLE IF NOT EXISTS edgesync_registry_subs (
	scope_key bytea NOT NULL,
	conn_key bytea NOT NULL,
	namespace_key bytea NOT NULL,
	topic_key bytea NOT NULL,
	topic bytea NOT NULL,
	PRIMARY KEY (scope_key, conn_key, topic_key),
	FOREIGN KEY (scope_key, conn_key) REFERENCES edgesync_registry_conns (scope_key, id_key) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS edgesync_registry_subs_namespace_topic ON edgesync_registry_subs (scope_key, namespace_key, topic_key, conn_key);
CREATE INDEX IF NOT EXISTS edgesync_registry_subs_topic ON edgesync_registry_subs (scope_key, topic_key, conn_key);`

// key returns the digest by which the Registry's rows and indexes find name.
func key(name string) []byte {
	sum := sha256.Sum256([]byte(name))
	return sum[:]
}

// Migrate creates the Registry's tables and indexes unless they exist. The
// first operation of a Registry does it too, when the tables are missing.
func (r *Registry) Migrate(ctx context.Context) error {
	if _, err := r.pool.Exec(ctx, registrySchema); err != nil {
		return fmt.Errorf("pgsync: creating the registry tables: %w", err)
	}
	r.mu.Lock()
	r.migrated = true
	r.mu.Unlock()
	return nil
}

// ensure creates the tables on first use. It checks first, because CREATE
// TABLE IF NOT EXISTS fails for a role without CREATE even when the table is
// there.
func (r *Registry) ensure(ctx context.Context) error {
	r.mu.Lock()
	migrated := r.migrated
	r.mu.Unlock()
	if migrated {
		return nil
	}
	var exists bool
	err := r.pool.QueryRow(ctx,
		"SELECT to_regclass('edgesync_registry_conns') IS NOT NULL AND to_regclass('edgesync_registry_subs') IS NOT NULL").Scan(&exists)
	if err != nil {
		return fmt.Errorf("pgsync: looking for the registry tables: %w", err)
	}
	if !exists {
		return r.Migrate(ctx)
	}
	r.mu.Lock()
	r.migrated = true
	r.mu.Unlock()
	return nil
}

func notFound(id string) error {
	return fmt.Errorf("pgsync: connection %s: %w", quote(id), edge.ErrNotFound)
}

// quote quotes a name for an error message, cutting a long one short.
func quote(name string) string {
	const limit = 64
	if len(name) <= limit {
		return fmt.Sprintf("%q", name)
	}
	return fmt.Sprintf("%q… (%d bytes)", name[:limit], len(name))
}

// addSQL replaces the connection and forgets the subscriptions of any
// connection it replaces.
const addSQL = `WITH forgotten AS (DELETE FROM edgesync_registry_subs WHERE scope_key = $1 AND conn_key = $2)
INSERT INTO edgesync_registry_conns (scope_key, id_key, id, namespace, namespace_key, attrs, connected_at, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, coalesce($7, now()), coalesce($8, now() + $9::bigint * interval '1 microsecond'))
ON CONFLICT (scope_key, id_key) DO UPDATE SET id = excluded.id, namespace = excluded.namespace,
	namespace_key = excluded.namespace_key, attrs = excluded.attrs,
	connected_at = excluded.connected_at, expires_at = excluded.expires_at`

// pruneSQL deletes expired connections, of every scope, and so their
// subscriptions. SKIP LOCKED keeps concurrent prunes from waiting on, or
// deadlocking with, each other.
const pruneSQL = `DELETE FROM edgesync_registry_conns WHERE (scope_key, id_key) IN (
	SELECT scope_key, id_key FROM edgesync_registry_conns WHERE expires_at <= now() LIMIT $1 FOR UPDATE SKIP LOCKED)`

// Add stores c, replacing any connection with the same ID together with its
// subscriptions. A zero c.ConnectedAt means now; a zero c.ExpiresAt means now
// plus the Registry's TTL. Timestamps are kept to the microsecond.
func (r *Registry) Add(ctx context.Context, c edge.Conn) error {
	if c.ID == "" {
		return errors.New("pgsync: add: connection has no ID")
	}
	if err := r.ensure(ctx); err != nil {
		return err
	}
	args := []any{r.scope, key(c.ID), []byte(c.ID), []byte(c.Namespace), key(c.Namespace), c.Attrs,
		optionalTime(c.ConnectedAt), optionalTime(c.ExpiresAt), r.ttl.Microseconds()}
	var err error
	if r.pruneDue() {
		b := &pgx.Batch{}
		b.Queue(pruneSQL, pruneBatch)
		b.Queue(addSQL, args...)
		err = r.pool.SendBatch(ctx, b).Close()
	} else {
		_, err = r.pool.Exec(ctx, addSQL, args...)
	}
	if err != nil {
		return fmt.Errorf("pgsync: add connection %s: %w", quote(c.ID), err)
	}
	return nil
}

// pruneDue reports whether Add should prune expired connections now.
func (r *Registry) pruneDue() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	if now.Sub(r.lastPrune) < pruneInterval {
		return false
	}
	r.lastPrune = now
	return true
}

// prune deletes up to pruneBatch expired connections and returns how many.
func (r *Registry) prune(ctx context.Context) (int64, error) {
	tag, err := r.pool.Exec(ctx, pruneSQL, pruneBatch)
	if err != nil {
		return 0, fmt.Errorf("pgsync: prune expired connections: %w", err)
	}
	return tag.RowsAffected(), nil
}

func optionalTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// Remove forgets the connection and all its subscriptions. Removing an
// unknown connection is not an error.
func (r *Registry) Remove(ctx context.Context, id string) error {
	if err := r.ensure(ctx); err != nil {
		return err
	}
	if _, err := r.pool.Exec(ctx, "DELETE FROM edgesync_registry_conns WHERE scope_key = $1 AND id_key = $2", r.scope, key(id)); err != nil {
		return fmt.Errorf("pgsync: remove connection %s: %w", quote(id), err)
	}
	return nil
}

// Get returns the connection, or an error wrapping edge.ErrNotFound.
func (r *Registry) Get(ctx context.Context, id string) (edge.Conn, error) {
	if err := r.ensure(ctx); err != nil {
		return edge.Conn{}, err
	}
	c := edge.Conn{ID: id}
	var namespace []byte
	err := r.pool.QueryRow(ctx, `SELECT namespace, attrs, connected_at, expires_at FROM edgesync_registry_conns
		WHERE scope_key = $1 AND id_key = $2 AND expires_at > now()`, r.scope, key(id)).
		Scan(&namespace, &c.Attrs, &c.ConnectedAt, &c.ExpiresAt)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return edge.Conn{}, notFound(id)
	case err != nil:
		return edge.Conn{}, fmt.Errorf("pgsync: get connection %s: %w", quote(id), err)
	}
	c.Namespace = string(namespace)
	return c, nil
}

// subscribeSQL adds the subscription if the connection is live, and returns
// whether it is.
const subscribeSQL = `WITH live AS (
	SELECT namespace_key FROM edgesync_registry_conns WHERE scope_key = $1 AND id_key = $2 AND expires_at > now()
), added AS (
	INSERT INTO edgesync_registry_subs (scope_key, conn_key, namespace_key, topic_key, topic)
	SELECT $1, $2, namespace_key, $3, $4 FROM live
	ON CONFLICT DO NOTHING
)
SELECT count(*) FROM live`

// Subscribe adds topic to the connection's subscriptions. It returns an error
// wrapping edge.ErrNotFound for an unknown or expired connection, and
// edge.ErrInvalidTopic for an empty topic.
func (r *Registry) Subscribe(ctx context.Context, id, topic string) error {
	if topic == "" {
		return edge.ErrInvalidTopic
	}
	if err := r.ensure(ctx); err != nil {
		return err
	}
	var live int
	err := r.pool.QueryRow(ctx, subscribeSQL, r.scope, key(id), key(topic), []byte(topic)).Scan(&live)
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &pgErr) && pgErr.Code == "23503": // foreign_key_violation: removed meanwhile
		return notFound(id)
	case err != nil:
		return fmt.Errorf("pgsync: subscribe connection %s to %s: %w", quote(id), quote(topic), err)
	case live == 0:
		return notFound(id)
	}
	return nil
}

// Unsubscribe removes topic from the connection's subscriptions. Removing a
// topic the connection does not have, or from an unknown connection, is not
// an error.
func (r *Registry) Unsubscribe(ctx context.Context, id, topic string) error {
	if err := r.ensure(ctx); err != nil {
		return err
	}
	_, err := r.pool.Exec(ctx, "DELETE FROM edgesync_registry_subs WHERE scope_key = $1 AND conn_key = $2 AND topic_key = $3",
		r.scope, key(id), key(topic))
	if err != nil {
		return fmt.Errorf("pgsync: unsubscribe connection %s from %s: %w", quote(id), quote(topic), err)
	}
	return nil
}

// Topics returns the connection's topics, sorted bytewise, or an error
// wrapping edge.ErrNotFound for an unknown or expired connection.
func (r *Registry) Topics(ctx context.Context, id string) ([]string, error) {
	if err := r.ensure(ctx); err != nil {
		return nil, err
	}
	rows, err := r.pool.Query(ctx, `SELECT s.topic FROM edgesync_registry_conns c
		LEFT JOIN edgesync_registry_subs s ON s.scope_key = c.scope_key AND s.conn_key = c.id_key
		WHERE c.scope_key = $1 AND c.id_key = $2 AND c.expires_at > now()
		ORDER BY s.topic`, r.scope, key(id))
	if err != nil {
		return nil, fmt.Errorf("pgsync: topics of connection %s: %w", quote(id), err)
	}
	found := false
	topics := []string{}
	for rows.Next() {
		found = true
		var topic []byte // nil for a connection without topics
		if err := rows.Scan(&topic); err != nil {
			rows.Close()
			return nil, fmt.Errorf("pgsync: topics of connection %s: %w", quote(id), err)
		}
		if topic != nil {
			topics = append(topics, string(topic))
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("pgsync: topics of connection %s: %w", quote(id), err)
	}
	if !found {
		return nil, notFound(id)
	}
	return topics, nil
}

// Pages of subscribers, by the digest of their id after $4, of one namespace
// or of all. Each uses its index on edgesync_registry_subs.
const (
	subscribersSQL = `SELECT c.id, s.conn_key FROM edgesync_registry_subs s
	JOIN edgesync_registry_conns c ON c.scope_key = s.scope_key AND c.id_key = s.conn_key
	WHERE s.scope_key = $1 AND s.namespace_key = $2 AND s.topic_key = $3 AND s.conn_key > $4 AND c.expires_at > now()
	ORDER BY s.conn_key LIMIT $5`
	allSubscribersSQL = `SELECT c.id, s.conn_key FROM edgesync_registry_subs s
	JOIN edgesync_registry_conns c ON c.scope_key = s.scope_key AND c.id_key = s.conn_key
	WHERE s.scope_key = $1 AND s.topic_key = $2 AND s.conn_key > $3 AND c.expires_at > now()
	ORDER BY s.conn_key LIMIT $4`
)

// subscriber is one row of a page of Subscribers.
type subscriber struct {
	ID  []byte
	Key []byte
}

// Subscribers calls each with the id of every live connection subscribed to
// topic in namespace ("" means every namespace) until each returns false.
// It reads the ids a page at a time, in no particular order, and holds no
// database connection while each runs, so each may call the Registry.
func (r *Registry) Subscribers(ctx context.Context, namespace, topic string, each func(id string) bool) error {
	if err := r.ensure(ctx); err != nil {
		return err
	}
	after := []byte{}
	for {
		var rows pgx.Rows
		var err error
		if namespace == "" {
			rows, err = r.pool.Query(ctx, allSubscribersSQL, r.scope, key(topic), after, r.pageSize)
		} else {
			rows, err = r.pool.Query(ctx, subscribersSQL, r.scope, key(namespace), key(topic), after, r.pageSize)
		}
		if err != nil {
			return fmt.Errorf("pgsync: subscribers of %s: %w", quote(topic), err)
		}
		page, err := pgx.CollectRows(rows, pgx.RowToStructByPos[subscriber])
		if err != nil {
			return fmt.Errorf("pgsync: subscribers of %s: %w", quote(topic), err)
		}
		for _, sub := range page {
			if !each(string(sub.ID)) {
				return nil
			}
		}
		if len(page) < r.pageSize {
			return nil
		}
		after = page[len(page)-1].Key
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}
