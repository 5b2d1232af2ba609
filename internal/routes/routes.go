// Package routes is the bookkeeping of a routed driver: the topics its Hub
// routes, the keys they map to (a bucket channel, a subject), counted by
// topic, and the keys that lost their last topic and linger before they are
// released. Each driver keeps its own network side and asks a Table what to
// subscribe and what to release.
package routes

import (
	"sync"
	"time"
)

// Table is the set of routed topics of one routed driver and the keys they
// map to. A key is wanted while at least one routed topic maps to it; a key
// that loses its last topic lingers for the Table's linger, and is released
// then unless a topic wants it again first. A Table is safe for concurrent
// use.
type Table[K comparable] struct {
	key    func(topic string) K
	linger time.Duration
	now    func() time.Time

	mu      sync.RWMutex
	topics  map[string]struct{} // the routed topics
	refs    map[K]int           // routed topics by key
	pending map[K]struct{}      // keys that gained their first topic since the last Take
	idle    map[K]time.Time     // keys that lost their last topic, and when
}

// New returns an empty Table whose topics map to keys through key. A key
// lingers for linger after it lost its last topic (a linger of zero or less
// releases it at the next Take). now, time.Now when nil, stamps the moment a
// key lost its last topic.
func New[K comparable](key func(topic string) K, linger time.Duration, now func() time.Time) *Table[K] {
	if now == nil {
		now = time.Now
	}
	return &Table[K]{
		key:     key,
		linger:  linger,
		now:     now,
		topics:  make(map[string]struct{}),
		refs:    make(map[K]int),
		pending: make(map[K]struct{}),
		idle:    make(map[K]time.Time),
	}
}

// Route records topic as wanted or no longer wanted. It reports whether the
// wanted keys changed: topic's key gained its first topic, or lost its
// last one. Routing a topic already in the state asked for changes nothing.
func (t *Table[K]) Route(topic string, want bool) (changed bool) {
	k := t.key(topic)
	t.mu.Lock()
	defer t.mu.Unlock()
	_, routed := t.topics[topic]
	switch {
	case want && !routed:
		t.topics[topic] = struct{}{}
		if t.refs[k]++; t.refs[k] == 1 {
			t.pending[k] = struct{}{}
			delete(t.idle, k)
			return true
		}
	case !want && routed:
		delete(t.topics, topic)
		if t.refs[k]--; t.refs[k] <= 0 {
			delete(t.refs, k)
			t.idle[k] = t.now()
			return true
		}
	}
	return false
}

// Wants reports whether topic is routed. A message of another topic that
// shares its key, or of a key still lingering, is not wanted.
func (t *Table[K]) Wants(topic string) bool {
	t.mu.RLock()
	_, ok := t.topics[topic]
	t.mu.RUnlock()
	return ok
}

// Take returns what to do at now: subscribe, the keys that gained their
// first topic since the last Take and are still wanted, and release, the
// keys whose linger ended by now and that no topic wants again; released
// keys are forgotten. next is how long until the earliest key still
// lingering is due, zero when none is. A key may be in subscribe that the
// caller holds already (it was re-wanted while lingering), or in release
// that it never subscribed (it lost its topics before a Take): the caller
// checks them against what it holds.
func (t *Table[K]) Take(now time.Time) (subscribe, release []K, next time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for k := range t.pending {
		if t.refs[k] > 0 {
			subscribe = append(subscribe, k)
		}
	}
	clear(t.pending)
	for k, since := range t.idle {
		if left := t.linger - now.Sub(since); left > 0 {
			if next == 0 || left < next {
				next = left
			}
			continue
		}
		delete(t.idle, k)
		release = append(release, k)
	}
	return subscribe, release, next
}

// All returns every wanted key, in no particular order: what a new
// connection subscribes to. Lingering keys are not among them.
func (t *Table[K]) All() []K {
	t.mu.RLock()
	defer t.mu.RUnlock()
	out := make([]K, 0, len(t.refs))
	for k := range t.refs {
		out = append(out, k)
	}
	return out
}
