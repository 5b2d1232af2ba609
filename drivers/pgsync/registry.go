package pgsync

import (
	"context"
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
// edgesync_conns and edgesync_subs. A connection whose ExpiresAt has passed,
// by the server's clock, behaves as one that was removed; Add deletes such
// rows from time to time. A Registry is safe for concurrent use.
type Registry struct {
	pool     *pgxpool.Pool
	scope    string
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
	r := &Registry{pool: opts.Pool, scope: opts.Channel, ttl: opts.TTL, pageSize: subscribersPage}
	if r.ttl <= 0 {
		r.ttl = DefaultTTL
	}
	return r, nil
}

// registrySchema creates the Registry's tables in one implicit transaction
// that holds the migration lock. Text columns compare bytewise (collation
// "C"), so that topics sort as Go sorts strings.
const registrySchema = lockMigrations + `
CREATE TABLE IF NOT EXISTS edgesync_conns (
	scope text COLLATE "C" NOT NULL,
	id text COLLATE "C" NOT NULL,
	namespace text COLLATE "C" NOT NULL,
	attrs jsonb,
	connected_at timestamptz NOT NULL,
	expires_at timestamptz NOT NULL,
	PRIMARY KEY (scope, id)
);
CREATE INDEX IF NOT EXISTS edgesync_conns_expires_at ON edgesync_conns (expires_at);
CREATE TABLE IF NOT EXISTS edgesync_subs (
	scope text COLLATE "C" NOT NULL,
	conn_id text COLLATE "C" NOT NULL,
	namespace text COLLATE "C" NOT NULL,
	topic text COLLATE "C" NOT NULL,
	PRIMARY KEY (scope, conn_id, topic),
	FOREIGN KEY (scope, conn_id) REFERENCES edgesync_conns (scope, id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS edgesync_subs_namespace_topic ON edgesync_subs (scope, namespace, topic, conn_id);
CREATE INDEX IF NOT EXISTS edgesync_subs_topic ON edgesync_subs (scope, topic, conn_id);`

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
		"SELECT to_regclass('edgesync_conns') IS NOT NULL AND to_regclass('edgesync_subs') IS NOT NULL").Scan(&exists)
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
	return fmt.Errorf("pgsync: connection %q: %w", id, edge.ErrNotFound)
}

// addSQL replaces the connection and forgets the subscriptions of any
// connection it replaces.
const addSQL = `WITH forgotten AS (DELETE FROM edgesync_subs WHERE scope = $1 AND conn_id = $2)
INSERT INTO edgesync_conns (scope, id, namespace, attrs, connected_at, expires_at)
VALUES ($1, $2, $3, $4, coalesce($5, now()), coalesce($6, now() + $7::bigint * interval '1 microsecond'))
ON CONFLICT (scope, id) DO UPDATE SET namespace = excluded.namespace, attrs = excluded.attrs,
	connected_at = excluded.connected_at, expires_at = excluded.expires_at`

// pruneSQL deletes expired connections, of every scope, and so their
// subscriptions. SKIP LOCKED keeps concurrent prunes from waiting on, or
// deadlocking with, each other.
const pruneSQL = `DELETE FROM edgesync_conns WHERE (scope, id) IN (
	SELECT scope, id FROM edgesync_conns WHERE expires_at <= now() LIMIT $1 FOR UPDATE SKIP LOCKED)`

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
	args := []any{r.scope, c.ID, c.Namespace, c.Attrs, optionalTime(c.ConnectedAt), optionalTime(c.ExpiresAt), r.ttl.Microseconds()}
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
		return fmt.Errorf("pgsync: add connection %q: %w", c.ID, err)
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
	if _, err := r.pool.Exec(ctx, "DELETE FROM edgesync_conns WHERE scope = $1 AND id = $2", r.scope, id); err != nil {
		return fmt.Errorf("pgsync: remove connection %q: %w", id, err)
	}
	return nil
}

// Get returns the connection, or an error wrapping edge.ErrNotFound.
func (r *Registry) Get(ctx context.Context, id string) (edge.Conn, error) {
	if err := r.ensure(ctx); err != nil {
		return edge.Conn{}, err
	}
	c := edge.Conn{ID: id}
	err := r.pool.QueryRow(ctx, `SELECT namespace, attrs, connected_at, expires_at FROM edgesync_conns
		WHERE scope = $1 AND id = $2 AND expires_at > now()`, r.scope, id).
		Scan(&c.Namespace, &c.Attrs, &c.ConnectedAt, &c.ExpiresAt)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return edge.Conn{}, notFound(id)
	case err != nil:
		return edge.Conn{}, fmt.Errorf("pgsync: get connection %q: %w", id, err)
	}
	return c, nil
}

// subscribeSQL adds the subscription if the connection is live, and returns
// whether it is.
const subscribeSQL = `WITH live AS (
	SELECT namespace FROM edgesync_conns WHERE scope = $1 AND id = $2 AND expires_at > now()
), added AS (
	INSERT INTO edgesync_subs (scope, conn_id, namespace, topic)
	SELECT $1, $2, namespace, $3 FROM live
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
	err := r.pool.QueryRow(ctx, subscribeSQL, r.scope, id, topic).Scan(&live)
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &pgErr) && pgErr.Code == "23503": // foreign_key_violation: removed meanwhile
		return notFound(id)
	case err != nil:
		return fmt.Errorf("pgsync: subscribe connection %q to %q: %w", id, topic, err)
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
	_, err := r.pool.Exec(ctx, "DELETE FROM edgesync_subs WHERE scope = $1 AND conn_id = $2 AND topic = $3", r.scope, id, topic)
	if err != nil {
		return fmt.Errorf("pgsync: unsubscribe connection %q from %q: %w", id, topic, err)
	}
	return nil
}

// Topics returns the connection's topics, sorted bytewise, or an error
// wrapping edge.ErrNotFound for an unknown or expired connection.
func (r *Registry) Topics(ctx context.Context, id string) ([]string, error) {
	if err := r.ensure(ctx); err != nil {
		return nil, err
	}
	rows, err := r.pool.Query(ctx, `SELECT s.topic FROM edgesync_conns c
		LEFT JOIN edgesync_subs s ON s.scope = c.scope AND s.conn_id = c.id
		WHERE c.scope = $1 AND c.id = $2 AND c.expires_at > now()
		ORDER BY s.topic`, r.scope, id)
	if err != nil {
		return nil, fmt.Errorf("pgsync: topics of connection %q: %w", id, err)
	}
	found := false
	topics := []string{}
	for rows.Next() {
		found = true
		var topic *string
		if err := rows.Scan(&topic); err != nil {
			rows.Close()
			return nil, fmt.Errorf("pgsync: topics of connection %q: %w", id, err)
		}
		if topic != nil {
			topics = append(topics, *topic)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("pgsync: topics of connection %q: %w", id, err)
	}
	if !found {
		return nil, notFound(id)
	}
	return topics, nil
}

// Pages of subscribers, by connection id after $4, of one namespace or of
// all. Each uses its index on edgesync_subs.
const (
	subscribersSQL = `SELECT s.conn_id FROM edgesync_subs s
	JOIN edgesync_conns c ON c.scope = s.scope AND c.id = s.conn_id
	WHERE s.scope = $1 AND s.namespace = $2 AND s.topic = $3 AND s.conn_id > $4 AND c.expires_at > now()
	ORDER BY s.conn_id LIMIT $5`
	allSubscribersSQL = `SELECT s.conn_id FROM edgesync_subs s
	JOIN edgesync_conns c ON c.scope = s.scope AND c.id = s.conn_id
	WHERE s.scope = $1 AND s.topic = $3 AND s.conn_id > $4 AND c.expires_at > now() AND $2 = ''
	ORDER BY s.conn_id LIMIT $5`
)

// Subscribers calls each with the id of every live connection subscribed to
// topic in namespace ("" means every namespace) until each returns false.
// It reads the ids a page at a time and holds no database connection while
// each runs, so each may call the Registry.
func (r *Registry) Subscribers(ctx context.Context, namespace, topic string, each func(id string) bool) error {
	if err := r.ensure(ctx); err != nil {
		return err
	}
	query := subscribersSQL
	if namespace == "" {
		query = allSubscribersSQL
	}
	after := ""
	for {
		rows, err := r.pool.Query(ctx, query, r.scope, namespace, topic, after, r.pageSize)
		if err != nil {
			return fmt.Errorf("pgsync: subscribers of %q: %w", topic, err)
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("pgsync: subscribers of %q: %w", topic, err)
		}
		for _, id := range ids {
			if !each(id) {
				return nil
			}
		}
		if len(ids) < r.pageSize {
			return nil
		}
		after = ids[len(ids)-1]
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}
