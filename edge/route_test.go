package edge_test

import (
	"slices"
	"sync"
	"testing"

	"github.com/edgesync/edgesync/edge"
)

// routedDriver is a fakeDriver that records the Hub's Route calls.
type routedDriver struct {
	*fakeDriver
	mu     sync.Mutex
	routes []string
}

func (d *routedDriver) Route(topic string, want bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	sign := "-"
	if want {
		sign = "+"
	}
	d.routes = append(d.routes, sign+topic)
}

func (d *routedDriver) calls() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := slices.Clone(d.routes)
	d.routes = nil
	return out
}

func TestHubRoutesTopicsByTheirFirstAndLastSubscriber(t *testing.T) {
	d := &routedDriver{fakeDriver: newFakeDriver()}
	h := newHub(t, edge.Options{Sync: func(edge.Instance) (edge.Driver, error) { return d, nil }})
	a, _ := join(t, h, "/a")
	b, _ := join(t, h, "/b")
	if got := d.calls(); !slices.Equal(got, []string{"+" + edge.PeerTopicPrefix + a.ID(), "+" + edge.PeerTopicPrefix + b.ID()}) {
		t.Fatalf("joins routed %v, want each peer's own topic", got)
	}
	for _, m := range []*edge.Member{a, b} {
		if err := m.Subscribe("t"); err != nil {
			t.Fatal(err)
		}
	}
	if got := d.calls(); !slices.Equal(got, []string{"+t"}) {
		t.Fatalf("two namespaces subscribing routed %v, want +t once", got)
	}
	a.Unsubscribe("t")
	if got := d.calls(); len(got) != 0 {
		t.Fatalf("a namespace left with a subscriber routed %v", got)
	}
	b.Leave()
	if got := d.calls(); !slices.Equal(got, []string{"-t", "-" + edge.PeerTopicPrefix + b.ID()}) {
		t.Fatalf("the last subscriber leaving routed %v", got)
	}
}

func TestPublishOnlyHubRoutesNothing(t *testing.T) {
	d := &routedDriver{fakeDriver: newFakeDriver()}
	h := newHub(t, edge.Options{Sync: func(edge.Instance) (edge.Driver, error) { return d, nil }, PublishOnly: true})
	join(t, h, "/a", "t")
	if got := d.calls(); len(got) != 0 {
		t.Fatalf("a publish-only hub routed %v", got)
	}
}
