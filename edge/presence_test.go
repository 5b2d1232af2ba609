package edge_test

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgesync/edgesync/drivers/memsync"
	"github.com/edgesync/edgesync/edge"
)

// present lists the ids and "user" attributes of the peers Presence lists,
// once every presence record queued so far is written (Flush).
func present(t *testing.T, h *edge.Hub, writers []*edge.Hub, namespace, topic string) []string {
	t.Helper()
	for _, w := range writers {
		if err := w.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	list, err := h.Presence(context.Background(), namespace, topic)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range list {
		got = append(got, p.Namespace+" "+p.Attrs["user"])
	}
	slices.Sort(got)
	return got
}

func TestPresenceListsPeersOfEveryInstance(t *testing.T) {
	reg := memsync.NewRegistry(memsync.RegistryOptions{})
	a := newHub(t, edge.Options{Presence: reg})
	b := newHub(t, edge.Options{Presence: reg})
	lone := newHub(t, edge.Options{Presence: reg}) // holds nobody: lists from the Registry only
	hubs := []*edge.Hub{a, b, lone}

	ann, _ := join(t, a, "/chat")
	ann.SetAttrs(map[string]string{"user": "ann"})
	bob, _ := join(t, b, "/chat")
	bob.SetAttrs(map[string]string{"user": "bob"})
	cat, _ := join(t, b, "/other")
	cat.SetAttrs(map[string]string{"user": "cat"})
	for _, m := range []*edge.Member{ann, bob, cat} {
		if err := m.Subscribe("room"); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"/chat ann", "/chat bob"}
	for _, h := range hubs {
		if got := present(t, h, hubs, "/chat", "room"); !slices.Equal(got, want) {
			t.Fatalf("presence %v, want %v", got, want)
		}
	}
	if got := present(t, lone, hubs, "", "room"); !slices.Equal(got, []string{"/chat ann", "/chat bob", "/other cat"}) {
		t.Fatalf("presence in every namespace: %v", got)
	}

	// Unsubscribing and leaving take peers out, everywhere.
	if err := bob.Unsubscribe("room"); err != nil {
		t.Fatal(err)
	}
	ann.Leave()
	if got := present(t, lone, hubs, "/chat", "room"); len(got) != 0 {
		t.Fatalf("presence after leaving: %v", got)
	}
}

func TestPresenceIncludesTheGatewaysPeers(t *testing.T) {
	reg := memsync.NewRegistry(memsync.RegistryOptions{})
	gwReg := memsync.NewRegistry(memsync.RegistryOptions{})
	ctx := context.Background()
	if err := gwReg.Add(ctx, edge.Conn{ID: "gw-1", Namespace: "/chat", Attrs: map[string]string{"user": "dan"}}); err != nil {
		t.Fatal(err)
	}
	if err := gwReg.Subscribe(ctx, "gw-1", "room"); err != nil {
		t.Fatal(err)
	}
	h := newHub(t, edge.Options{Presence: reg, Gateway: registryGateway{gwReg}})
	ann, _ := join(t, h, "/chat")
	ann.SetAttrs(map[string]string{"user": "ann"})
	if err := ann.Subscribe("room"); err != nil {
		t.Fatal(err)
	}
	if got := present(t, h, []*edge.Hub{h}, "/chat", "room"); !slices.Equal(got, []string{"/chat ann", "/chat dan"}) {
		t.Fatalf("presence %v", got)
	}
}

// registryGateway is a RegistryGateway that posts nothing.
type registryGateway struct{ reg edge.Registry }

func (g registryGateway) Deliver(context.Context, edge.Message, string) error { return nil }
func (g registryGateway) Registry() edge.Registry                             { return g.reg }

func TestPresenceForgetsADeadInstanceWithinTheTTL(t *testing.T) {
	var skew atomic.Int64 // how far the Registry's clock is ahead
	reg := memsync.NewRegistry(memsync.RegistryOptions{Now: func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }})
	a, err := edge.New(edge.Options{Presence: reg, PresenceTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	b := newHub(t, edge.Options{Presence: reg})
	ann, _ := join(t, a, "/chat")
	ann.SetAttrs(map[string]string{"user": "ann"})
	if err := ann.Subscribe("room"); err != nil {
		t.Fatal(err)
	}
	if got := present(t, b, []*edge.Hub{a}, "/chat", "room"); len(got) != 1 {
		t.Fatalf("presence %v", got)
	}
	a.Close() // dies: ann never leaves
	skew.Store(int64(59 * time.Second))
	if got := present(t, b, nil, "/chat", "room"); len(got) != 1 {
		t.Fatalf("presence before the TTL: %v", got)
	}
	skew.Store(int64(61 * time.Second))
	if got := present(t, b, nil, "/chat", "room"); len(got) != 0 {
		t.Fatalf("presence after the TTL: %v", got)
	}
}
