package memsync

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/edgesync/edgesync/edge"
)

// DefaultTTL is how long a Registry keeps a connection added with a zero
// ExpiresAt: the longest an API Gateway WebSocket connection lives.
const DefaultTTL = edge.DefaultConnTTL

// RegistryOptions configure a Registry. The zero value is ready to use.
type RegistryOptions struct {
	// TTL is the lifetime of a connection added with a zero ExpiresAt.
	// 0 means DefaultTTL.
	TTL time.Duration
	// Now returns the current time. nil means time.Now.
	Now func() time.Time
}

// Registry is an in-memory edge.Registry with expiry. A connection whose
// ExpiresAt has passed behaves as one that was removed, and is pruned when an
// operation meets it. A Registry is safe for concurrent use.
type Registry struct {
	ttl time.Duration
	now func() time.Time

	mu      sync.Mutex
	conns   map[string]*entry
	index   map[string]map[string]map[string]struct{} // namespace → topic → ids
	sweepAt int                                       // len(conns) at which Add prunes every expired entry
}

type entry struct {
	conn   edge.Conn
	topics map[string]struct{}
}

const minSweep = 64

var _ edge.Registry = (*Registry)(nil)

// NewRegistry returns an empty Registry.
func NewRegistry(opts RegistryOptions) *Registry {
	r := &Registry{
		ttl:     opts.TTL,
		now:     opts.Now,
		conns:   make(map[string]*entry),
		index:   make(map[string]map[string]map[string]struct{}),
		sweepAt: minSweep,
	}
	if r.ttl <= 0 {
		r.ttl = DefaultTTL
	}
	if r.now == nil {
		r.now = time.Now
	}
	return r
}

func notFound(id string) error {
	return fmt.Errorf("memsync: connection %q: %w", id, edge.ErrNotFound)
}

// Add stores c, replacing any connection with the same ID together with its
// subscriptions. A zero c.ExpiresAt means now plus the Registry's TTL. The
// Registry keeps its own copy of c.Attrs.
func (r *Registry) Add(ctx context.Context, c edge.Conn) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if c.ID == "" {
		return fmt.Errorf("memsync: add: connection has no ID")
	}
	now := r.now()
	if c.ExpiresAt.IsZero() {
		c.ExpiresAt = now.Add(r.ttl)
	}
	c.Attrs = maps.Clone(c.Attrs)

	r.mu.Lock()
	defer r.mu.Unlock()
	if old, ok := r.conns[c.ID]; ok {
		r.removeLocked(old)
	}
	r.conns[c.ID] = &entry{conn: c, topics: make(map[string]struct{})}
	if len(r.conns) >= r.sweepAt {
		r.sweepLocked(now)
	}
	return nil
}

// Remove forgets the connection and all its subscriptions. Removing an
// unknown connection is not an error.
func (r *Registry) Remove(ctx context.Context, id string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if e, ok := r.conns[id]; ok {
		r.removeLocked(e)
	}
	return nil
}

// Get returns the connection, or an error wrapping edge.ErrNotFound.
func (r *Registry) Get(ctx context.Context, id string) (edge.Conn, error) {
	if err := ctx.Err(); err != nil {
		return edge.Conn{}, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.liveLocked(id, r.now())
	if e == nil {
		return edge.Conn{}, notFound(id)
	}
	c := e.conn
	c.Attrs = maps.Clone(c.Attrs)
	return c, nil
}

// Subscribe adds topic to the connection's subscriptions. It returns an error
// wrapping edge.ErrNotFound for an unknown connection, and
// edge.ErrInvalidTopic for an empty topic.
func (r *Registry) Subscribe(ctx context.Context, id, topic string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if topic == "" {
		return edge.ErrInvalidTopic
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.liveLocked(id, r.now())
	if e == nil {
		return notFound(id)
	}
	if _, ok := e.topics[topic]; ok {
		return nil
	}
	e.topics[topic] = struct{}{}
	topics := r.index[e.conn.Namespace]
	if topics == nil {
		topics = make(map[string]map[string]struct{})
		r.index[e.conn.Namespace] = topics
	}
	ids := topics[topic]
	if ids == nil {
		ids = make(map[string]struct{})
		topics[topic] = ids
	}
	ids[id] = struct{}{}
	return nil
}

// Unsubscribe removes topic from the connection's subscriptions. Removing a
// topic the connection does not have, or from an unknown connection, is not
// an error.
func (r *Registry) Unsubscribe(ctx context.Context, id, topic string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.liveLocked(id, r.now()); e != nil {
		r.unsubscribeLocked(e, topic)
	}
	return nil
}

// Topics returns the connection's topics, sorted, or an error wrapping
// edge.ErrNotFound for an unknown connection.
func (r *Registry) Topics(ctx context.Context, id string) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.liveLocked(id, r.now())
	if e == nil {
		return nil, notFound(id)
	}
	return slices.Sorted(maps.Keys(e.topics)), nil
}

// Subscribers calls each with the id of every live connection subscribed to
// topic in namespace ("" means every namespace) until each returns false. It
// takes a snapshot of the ids and calls each without holding the Registry's
// lock, so each may call the Registry.
func (r *Registry) Subscribers(ctx context.Context, namespace, topic string, each func(id string) bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	ids := r.subscribers(namespace, topic)
	for _, id := range ids {
		if !each(id) {
			return nil
		}
	}
	return nil
}

func (r *Registry) subscribers(namespace, topic string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	var ids, expired []string
	collect := func(set map[string]struct{}) {
		for id := range set {
			if e := r.conns[id]; e != nil && now.Before(e.conn.ExpiresAt) {
				ids = append(ids, id)
			} else {
				expired = append(expired, id)
			}
		}
	}
	if namespace != "" {
		collect(r.index[namespace][topic])
	} else {
		for _, topics := range r.index {
			collect(topics[topic])
		}
	}
	for _, id := range expired {
		if e := r.conns[id]; e != nil {
			r.removeLocked(e)
		}
	}
	return ids
}

// liveLocked returns the entry of id, or nil when there is none or it has
// expired, in which case it is pruned.
func (r *Registry) liveLocked(id string, now time.Time) *entry {
	e := r.conns[id]
	if e == nil {
		return nil
	}
	if !now.Before(e.conn.ExpiresAt) {
		r.removeLocked(e)
		return nil
	}
	return e
}

func (r *Registry) removeLocked(e *entry) {
	for topic := range e.topics {
		r.unsubscribeLocked(e, topic)
	}
	delete(r.conns, e.conn.ID)
}

func (r *Registry) unsubscribeLocked(e *entry, topic string) {
	if _, ok := e.topics[topic]; !ok {
		return
	}
	delete(e.topics, topic)
	ns := e.conn.Namespace
	topics := r.index[ns]
	ids := topics[topic]
	delete(ids, e.conn.ID)
	if len(ids) == 0 {
		delete(topics, topic)
		if len(topics) == 0 {
			delete(r.index, ns)
		}
	}
}

// sweepLocked prunes every expired entry, so that connections nobody asks
// about again do not pile up. Add calls it each time the number of entries
// has doubled since the last sweep, which keeps its cost constant per Add.
func (r *Registry) sweepLocked(now time.Time) {
	for _, e := range r.conns {
		if !now.Before(e.conn.ExpiresAt) {
			r.removeLocked(e)
		}
	}
	r.sweepAt = max(2*len(r.conns), minSweep)
}
