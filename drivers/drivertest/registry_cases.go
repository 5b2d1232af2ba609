package drivertest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/edgesync/edgesync/edge"
)

// RunRegistryTests runs the Registry conformance cases against registries
// made by newRegistry (each call may return a fresh, empty registry of its own
// scope). The cases run in parallel and use random connection ids, namespaces
// and topics, so newRegistry may also return one shared registry.
//
// Besides the contract of edge.Registry, the cases check that a Registry
// keeps every id, namespace and topic exactly as given and apart from every
// other: NUL and other control characters, key separators, hash-tag braces
// and glob characters, the escapes of a key scheme, SQL quotes and comments,
// invalid UTF-8 and names of 64 KiB, as well as names that are prefixes of
// each other or read the same once joined by a separator. A Registry refuses
// none of them.
func RunRegistryTests(t *testing.T, newRegistry func(tb testing.TB) edge.Registry) {
	t.Helper()
	cases := []struct {
		name string
		run  func(t *testing.T, r edge.Registry)
	}{
		{"AddGetRemove", testAddGetRemove},
		{"ZeroExpiresAtIsChosenByTheRegistry", testZeroExpiresAt},
		{"SubscribeUnsubscribeTopics", testTopics},
		{"SubscribeUnknownConnection", testSubscribeUnknown},
		{"SubscribersByNamespaceAndTopic", testSubscribers},
		{"SubscribersStopEarly", testSubscribersStop},
		{"ManySubscribers", testManySubscribers},
		{"RemoveDropsEverySubscription", testRemoveDropsSubscriptions},
		{"ExpiredConnectionIsGone", testExpired},
		{"HostileNamesStayApart", testHostileNames},
		{"SeparatorsDoNotJoinNames", testSeparatorsDoNotJoin},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			r := newRegistry(t)
			if r == nil {
				t.Fatal("newRegistry returned nil")
			}
			c.run(t, r)
		})
	}
}

// newConnID returns a connection id no other case uses.
func newConnID() string { return "drivertest-conn-" + edge.NewID() }

// newName returns a namespace or topic no other case uses.
func newName(kind string) string { return "/drivertest-" + kind + "-" + edge.NewID() }

func regCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), bulkTimeout)
	t.Cleanup(cancel)
	return ctx
}

// conn returns a live connection in namespace.
func conn(namespace string) edge.Conn {
	now := time.Now()
	return edge.Conn{ID: newConnID(), Namespace: namespace, ConnectedAt: now, ExpiresAt: now.Add(time.Hour)}
}

func mustAdd(t *testing.T, r edge.Registry, c edge.Conn) {
	t.Helper()
	if err := r.Add(regCtx(t), c); err != nil {
		t.Fatalf("Add(%q): %v", c.ID, err)
	}
}

func mustSubscribe(t *testing.T, r edge.Registry, id string, topics ...string) {
	t.Helper()
	for _, topic := range topics {
		if err := r.Subscribe(regCtx(t), id, topic); err != nil {
			t.Fatalf("Subscribe(%q, %q): %v", id, topic, err)
		}
	}
}

func wantNotFound(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, edge.ErrNotFound) {
		t.Errorf("%s: err = %v, want one wrapping edge.ErrNotFound", what, err)
	}
}

// subscribers lists the subscribers of topic in namespace, sorted, failing t
// on an error or on an id listed twice.
func subscribers(t *testing.T, r edge.Registry, namespace, topic string) []string {
	t.Helper()
	var ids []string
	err := r.Subscribers(regCtx(t), namespace, topic, func(id string) bool {
		ids = append(ids, id)
		return true
	})
	if err != nil {
		t.Fatalf("Subscribers(%q, %q): %v", namespace, topic, err)
	}
	slices.Sort(ids)
	if c := slices.Compact(slices.Clone(ids)); len(c) != len(ids) {
		t.Errorf("Subscribers(%q, %q) listed %d ids, of which %d distinct", namespace, topic, len(ids), len(c))
	}
	return ids
}

func wantSubscribers(t *testing.T, r edge.Registry, namespace, topic string, want ...string) {
	t.Helper()
	got := subscribers(t, r, namespace, topic)
	want = slices.Sorted(slices.Values(want))
	if !slices.Equal(got, want) {
		t.Errorf("Subscribers(%q, %q) = %q, want %q", namespace, topic, got, want)
	}
}

func wantTopics(t *testing.T, r edge.Registry, id string, want ...string) {
	t.Helper()
	got, err := r.Topics(regCtx(t), id)
	if err != nil {
		t.Fatalf("Topics(%q): %v", id, err)
	}
	if len(got) != 0 || len(want) != 0 {
		if !slices.Equal(got, want) {
			t.Errorf("Topics(%q) = %q, want %q", id, got, want)
		}
	}
}

// sameTime reports whether a and b agree to the second.
func sameTime(a, b time.Time) bool {
	d := a.Sub(b)
	return d > -time.Second && d < time.Second
}

func testAddGetRemove(t *testing.T, r edge.Registry) {
	ctx := regCtx(t)
	ns := newName("ns")
	c := conn(ns)
	c.ConnectedAt = time.Now().Add(-90 * time.Second)
	c.Attrs = map[string]string{"user": "ada", "role": "admin ✓", "quote": `"x" \ y`, "json": `{"a":[1]}`}
	mustAdd(t, r, c)

	got, err := r.Get(ctx, c.ID)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if got.ID != c.ID || got.Namespace != c.Namespace {
		t.Errorf("Get = ID %q namespace %q, want ID %q namespace %q", got.ID, got.Namespace, c.ID, c.Namespace)
	}
	if !maps.Equal(got.Attrs, c.Attrs) {
		t.Errorf("Get: Attrs = %q, want %q", got.Attrs, c.Attrs)
	}
	if !sameTime(got.ConnectedAt, c.ConnectedAt) {
		t.Errorf("Get: ConnectedAt = %v, want %v", got.ConnectedAt, c.ConnectedAt)
	}
	if !sameTime(got.ExpiresAt, c.ExpiresAt) {
		t.Errorf("Get: ExpiresAt = %v, want %v", got.ExpiresAt, c.ExpiresAt)
	}

	// Add replaces a connection with the same ID.
	replaced := c
	replaced.Attrs = map[string]string{"user": "grace"}
	mustAdd(t, r, replaced)
	if got, err := r.Get(ctx, c.ID); err != nil {
		t.Errorf("Get after a second Add: %v", err)
	} else if !maps.Equal(got.Attrs, replaced.Attrs) {
		t.Errorf("Get after a second Add: Attrs = %q, want %q", got.Attrs, replaced.Attrs)
	}

	// A connection without attributes.
	bare := conn(ns)
	mustAdd(t, r, bare)
	if got, err := r.Get(ctx, bare.ID); err != nil {
		t.Errorf("Get of a connection without Attrs: %v", err)
	} else if len(got.Attrs) != 0 {
		t.Errorf("Get of a connection without Attrs: Attrs = %q, want none", got.Attrs)
	}

	_, err = r.Get(ctx, newConnID())
	wantNotFound(t, "Get of an unknown connection", err)

	if err := r.Remove(ctx, c.ID); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	_, err = r.Get(ctx, c.ID)
	wantNotFound(t, "Get after Remove", err)
	if err := r.Remove(ctx, c.ID); err != nil {
		t.Errorf("second Remove: %v", err)
	}
	if err := r.Remove(ctx, newConnID()); err != nil {
		t.Errorf("Remove of an unknown connection: %v", err)
	}
	if _, err := r.Get(ctx, bare.ID); err != nil {
		t.Errorf("Get of another connection after Remove: %v", err)
	}
}

func testZeroExpiresAt(t *testing.T, r edge.Registry) {
	c := conn(newName("ns"))
	c.ExpiresAt = time.Time{}
	mustAdd(t, r, c)
	got, err := r.Get(regCtx(t), c.ID)
	if err != nil {
		t.Fatalf("Get of a connection added with a zero ExpiresAt: %v", err)
	}
	if !got.ExpiresAt.IsZero() && !got.ExpiresAt.After(time.Now()) {
		t.Errorf("Get: ExpiresAt = %v, want a time to come", got.ExpiresAt)
	}
}

func testTopics(t *testing.T, r edge.Registry) {
	ctx := regCtx(t)
	c := conn(newName("ns"))
	mustAdd(t, r, c)
	wantTopics(t, r, c.ID)

	p := newName("topic")
	a, b, z := p+"/a", p+"/b", p+"/z ✓"
	mustSubscribe(t, r, c.ID, z, b, a, b, a)
	wantTopics(t, r, c.ID, a, b, z)

	for range 2 {
		if err := r.Unsubscribe(ctx, c.ID, b); err != nil {
			t.Fatalf("Unsubscribe: %v", err)
		}
	}
	if err := r.Unsubscribe(ctx, c.ID, p+"/never"); err != nil {
		t.Errorf("Unsubscribe from a topic never subscribed: %v", err)
	}
	wantTopics(t, r, c.ID, a, z)
	wantSubscribers(t, r, c.Namespace, b)
	wantSubscribers(t, r, c.Namespace, a, c.ID)
}

func testSubscribeUnknown(t *testing.T, r edge.Registry) {
	id := newConnID()
	err := r.Subscribe(regCtx(t), id, newName("topic"))
	wantNotFound(t, "Subscribe of an unknown connection", err)
	if _, err := r.Get(regCtx(t), id); !errors.Is(err, edge.ErrNotFound) {
		t.Errorf("Get after Subscribe of an unknown connection: err = %v, want edge.ErrNotFound", err)
	}
}

func testSubscribers(t *testing.T, r edge.Registry) {
	ns1, ns2 := newName("ns1"), newName("ns2")
	topic, other := newName("topic"), newName("other")
	c1, c2, c3, c4, c5 := conn(ns1), conn(ns1), conn(ns2), conn(ns1), conn(ns2)
	for _, c := range []edge.Conn{c1, c2, c3, c4, c5} {
		mustAdd(t, r, c)
	}
	mustSubscribe(t, r, c1.ID, topic)
	mustSubscribe(t, r, c2.ID, topic, other)
	mustSubscribe(t, r, c3.ID, topic)
	mustSubscribe(t, r, c4.ID, other)

	wantSubscribers(t, r, ns1, topic, c1.ID, c2.ID)
	wantSubscribers(t, r, ns2, topic, c3.ID)
	wantSubscribers(t, r, "", topic, c1.ID, c2.ID, c3.ID)
	wantSubscribers(t, r, ns1, other, c2.ID, c4.ID)
	wantSubscribers(t, r, ns2, other)
	wantSubscribers(t, r, newName("ns3"), topic)
	wantSubscribers(t, r, ns1, newName("nobody"))

	if err := r.Unsubscribe(regCtx(t), c2.ID, topic); err != nil {
		t.Fatalf("Unsubscribe: %v", err)
	}
	wantSubscribers(t, r, ns1, topic, c1.ID)
	wantSubscribers(t, r, "", topic, c1.ID, c3.ID)
	wantSubscribers(t, r, ns1, other, c2.ID, c4.ID)
}

func testSubscribersStop(t *testing.T, r edge.Registry) {
	ns, topic := newName("ns"), newName("topic")
	for range 5 {
		c := conn(ns)
		mustAdd(t, r, c)
		mustSubscribe(t, r, c.ID, topic)
	}
	for _, namespace := range []string{ns, ""} {
		for _, stopAfter := range []int{1, 3} {
			calls := 0
			err := r.Subscribers(regCtx(t), namespace, topic, func(string) bool {
				calls++
				return calls < stopAfter
			})
			if err != nil {
				t.Errorf("Subscribers(%q): %v", namespace, err)
			}
			if calls != stopAfter {
				t.Errorf("Subscribers(%q) called each %d times after it returned false on call %d", namespace, calls, stopAfter)
			}
		}
	}
}

func testManySubscribers(t *testing.T, r edge.Registry) {
	const n, workers = 2000, 8
	ns, topic := newName("ns"), newName("topic")
	ids := make([]string, n)
	for i := range ids {
		ids[i] = newConnID()
	}
	ctx := regCtx(t)
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n; i += workers {
				c := conn(ns)
				c.ID = ids[i]
				if err := r.Add(ctx, c); err != nil {
					errc <- fmt.Errorf("Add: %w", err)
					return
				}
				if err := r.Subscribe(ctx, c.ID, topic); err != nil {
					errc <- fmt.Errorf("Subscribe: %w", err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	for _, namespace := range []string{ns, ""} {
		got := subscribers(t, r, namespace, topic)
		if want := slices.Sorted(slices.Values(ids)); !slices.Equal(got, want) {
			t.Errorf("Subscribers(%q) listed %d ids, want the %d subscribed", namespace, len(got), n)
		}
	}
}

func testRemoveDropsSubscriptions(t *testing.T, r edge.Registry) {
	ctx := regCtx(t)
	ns, t1, t2 := newName("ns"), newName("topic1"), newName("topic2")
	c, stays := conn(ns), conn(ns)
	mustAdd(t, r, c)
	mustAdd(t, r, stays)
	mustSubscribe(t, r, c.ID, t1, t2)
	mustSubscribe(t, r, stays.ID, t1)

	if err := r.Remove(ctx, c.ID); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	wantSubscribers(t, r, ns, t1, stays.ID)
	wantSubscribers(t, r, "", t1, stays.ID)
	wantSubscribers(t, r, ns, t2)
	wantSubscribers(t, r, "", t2)
	if topics, err := r.Topics(ctx, c.ID); err != nil && !errors.Is(err, edge.ErrNotFound) {
		t.Errorf("Topics after Remove: %v, want none or edge.ErrNotFound", err)
	} else if len(topics) != 0 {
		t.Errorf("Topics after Remove = %q, want none", topics)
	}

	// The same id added again starts without subscriptions.
	mustAdd(t, r, c)
	wantTopics(t, r, c.ID)
	wantSubscribers(t, r, ns, t2)
	wantTopics(t, r, stays.ID, t1)
}

func testExpired(t *testing.T, r edge.Registry) {
	ctx := regCtx(t)
	ns, topic := newName("ns"), newName("topic")
	live, lapsed := conn(ns), conn(ns)
	mustAdd(t, r, live)
	mustAdd(t, r, lapsed)
	mustSubscribe(t, r, live.ID, topic)
	mustSubscribe(t, r, lapsed.ID, topic)
	wantSubscribers(t, r, ns, topic, live.ID, lapsed.ID)

	// The connection is added again with an expiry already past.
	lapsed.ExpiresAt = time.Now().Add(-time.Minute)
	mustAdd(t, r, lapsed)
	_, err := r.Get(ctx, lapsed.ID)
	wantNotFound(t, "Get of an expired connection", err)
	wantSubscribers(t, r, ns, topic, live.ID)
	wantSubscribers(t, r, "", topic, live.ID)
	err = r.Subscribe(ctx, lapsed.ID, newName("topic"))
	wantNotFound(t, "Subscribe of an expired connection", err)

	// A connection added already expired is never seen.
	born := conn(ns)
	born.ExpiresAt = time.Now().Add(-time.Second)
	mustAdd(t, r, born)
	_, err = r.Get(ctx, born.ID)
	wantNotFound(t, "Get of a connection added expired", err)
	err = r.Subscribe(ctx, born.ID, topic)
	wantNotFound(t, "Subscribe of a connection added expired", err)
	wantSubscribers(t, r, ns, topic, live.ID)
}
