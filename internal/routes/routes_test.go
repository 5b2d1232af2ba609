package routes_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgesync/edgesync/internal/routes"
)

// clock is a manual clock for a Table.
type clock struct{ t time.Time }

func (c *clock) now() time.Time                { return c.t }
func (c *clock) add(d time.Duration) time.Time { c.t = c.t.Add(d); return c.t }

// first maps a topic to its first byte, so that "a1" and "a2" share a key.
func first(topic string) byte { return topic[0] }

func sorted(keys []byte) string {
	slices.Sort(keys)
	return string(keys)
}

func newTable(linger time.Duration) (*routes.Table[byte], *clock) {
	c := &clock{t: time.Unix(1000, 0)}
	return routes.New(first, linger, c.now), c
}

func TestRouteSubscribesOnce(t *testing.T) {
	tab, c := newTable(time.Second)
	if !tab.Route("a1", true) {
		t.Fatal("Route of a new key reported no change")
	}
	if tab.Route("a1", true) {
		t.Fatal("Route of a topic routed already reported a change")
	}
	if !tab.Wants("a1") || tab.Wants("a2") {
		t.Fatalf("Wants(a1), Wants(a2) = %v, %v; want true, false", tab.Wants("a1"), tab.Wants("a2"))
	}
	sub, rel, next := tab.Take(c.now())
	if sorted(sub) != "a" || len(rel) != 0 || next != 0 {
		t.Fatalf("Take = %q, %q, %v; want a, none, 0", sub, rel, next)
	}
	if sub, rel, next := tab.Take(c.now()); len(sub)+len(rel) != 0 || next != 0 {
		t.Fatalf("second Take = %q, %q, %v; want nothing", sub, rel, next)
	}
}

func TestLingerThenRelease(t *testing.T) {
	tab, c := newTable(time.Second)
	tab.Route("a1", true)
	tab.Take(c.now())
	if !tab.Route("a1", false) {
		t.Fatal("Route of the last topic of a key reported no change")
	}
	if tab.Route("a1", false) {
		t.Fatal("Route of a topic not routed reported a change")
	}
	if tab.Wants("a1") {
		t.Fatal("Wants(a1) after it left")
	}
	sub, rel, next := tab.Take(c.add(400 * time.Millisecond))
	if len(sub)+len(rel) != 0 || next != 600*time.Millisecond {
		t.Fatalf("Take while lingering = %q, %q, %v; want nothing, 600ms", sub, rel, next)
	}
	sub, rel, next = tab.Take(c.add(600 * time.Millisecond))
	if len(sub) != 0 || sorted(rel) != "a" || next != 0 {
		t.Fatalf("Take after the linger = %q, %q, %v; want none, a, 0", sub, rel, next)
	}
	if sub, rel, _ := tab.Take(c.add(time.Hour)); len(sub)+len(rel) != 0 {
		t.Fatalf("Take after the release = %q, %q; want nothing", sub, rel)
	}
}

func TestRewantCancelsRelease(t *testing.T) {
	tab, c := newTable(time.Second)
	tab.Route("a1", true)
	tab.Take(c.now())
	tab.Route("a1", false)
	c.add(500 * time.Millisecond)
	if !tab.Route("a2", true) {
		t.Fatal("Route of a lingering key reported no change")
	}
	// Subscribed already, the key comes back as one to subscribe: the
	// caller knows it holds it.
	sub, rel, next := tab.Take(c.now())
	if sorted(sub) != "a" || len(rel) != 0 || next != 0 {
		t.Fatalf("Take = %q, %q, %v; want a, none, 0", sub, rel, next)
	}
	if sub, rel, _ := tab.Take(c.add(time.Hour)); len(sub)+len(rel) != 0 {
		t.Fatalf("Take after the old linger = %q, %q; want nothing", sub, rel)
	}
}

func TestRefcountAcrossTopics(t *testing.T) {
	tab, c := newTable(time.Second)
	tab.Route("a1", true)
	if tab.Route("a2", true) {
		t.Fatal("a second topic of a key reported a change")
	}
	tab.Route("b1", true)
	if sub, _, _ := tab.Take(c.now()); sorted(sub) != "ab" {
		t.Fatalf("subscribe = %q; want ab", sub)
	}
	if tab.Route("a1", false) {
		t.Fatal("a key that kept a topic reported a change")
	}
	if !tab.Wants("a2") || tab.Wants("a1") {
		t.Fatal("Wants does not follow the topics of a shared key")
	}
	if _, rel, next := tab.Take(c.add(time.Hour)); len(rel) != 0 || next != 0 {
		t.Fatalf("release = %q, next %v; want none while a2 wants a", rel, next)
	}
	if !tab.Route("a2", false) {
		t.Fatal("the last topic of a key reported no change")
	}
	if _, rel, _ := tab.Take(c.add(time.Second)); sorted(rel) != "a" {
		t.Fatalf("release = %q; want a", rel)
	}
}

func TestNextIsEarliest(t *testing.T) {
	tab, c := newTable(time.Second)
	tab.Route("a", true)
	tab.Route("b", true)
	tab.Take(c.now())
	tab.Route("a", false)
	c.add(300 * time.Millisecond)
	tab.Route("b", false)
	if _, _, next := tab.Take(c.add(100 * time.Millisecond)); next != 600*time.Millisecond {
		t.Fatalf("next = %v; want 600ms, when a is due", next)
	}
	if _, rel, next := tab.Take(c.add(600 * time.Millisecond)); sorted(rel) != "a" || next != 300*time.Millisecond {
		t.Fatalf("Take = %q, %v; want a, 300ms", rel, next)
	}
}

func TestZeroLingerReleasesAtOnce(t *testing.T) {
	tab, c := newTable(0)
	tab.Route("a", true)
	tab.Take(c.now())
	tab.Route("a", false)
	if _, rel, next := tab.Take(c.now()); sorted(rel) != "a" || next != 0 {
		t.Fatalf("Take = %q, %v; want a, 0", rel, next)
	}
}

func TestGoneBeforeTake(t *testing.T) {
	tab, c := newTable(time.Second)
	tab.Route("a", true)
	tab.Route("a", false)
	sub, rel, next := tab.Take(c.now())
	if len(sub)+len(rel) != 0 || next != time.Second {
		t.Fatalf("Take = %q, %q, %v; want nothing to subscribe, a lingering", sub, rel, next)
	}
}

func TestAll(t *testing.T) {
	tab, c := newTable(time.Second)
	if got := tab.All(); len(got) != 0 {
		t.Fatalf("All of an empty table = %q", got)
	}
	for _, topic := range strings.Fields("a1 a2 b1 c1") {
		tab.Route(topic, true)
	}
	tab.Take(c.now())
	tab.Route("c1", false) // lingering, not wanted
	tab.Route("a1", false) // a2 still wants a
	if got := sorted(tab.All()); got != "ab" {
		t.Fatalf("All = %q; want ab", got)
	}
}

func TestNilClock(t *testing.T) {
	tab := routes.New(first, time.Hour, nil)
	tab.Route("a", true)
	tab.Route("a", false)
	if _, rel, next := tab.Take(time.Now()); len(rel) != 0 || next <= 0 {
		t.Fatalf("Take = %q, %v; want a lingering for about an hour", rel, next)
	}
}
