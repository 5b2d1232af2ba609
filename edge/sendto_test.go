package edge_test

import (
	"context"
	"errors"
	"testing"

	"github.com/edgesync/edgesync/edge"
)

// peerGateway holds the peers in held and records what SendTo posts.
type peerGateway struct {
	fakeGateway
	held map[string]bool
	sent []string
}

func (g *peerGateway) SendTo(ctx context.Context, id string, d edge.Data) error {
	if !g.held[id] {
		return edge.ErrNotFound
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.sent = append(g.sent, id+":"+d.String())
	return nil
}

func TestSendToReachesOnePeerWhereverItIsHeld(t *testing.T) {
	d := newFakeDriver()
	gw := &peerGateway{held: map[string]bool{"gw-1": true}}
	h := newHub(t, edge.Options{Sync: d.sync, Gateway: gw})
	alice, aliceIn := join(t, h, "/ns", "t")
	_, bobIn := join(t, h, "/ns", "t")
	ctx := context.Background()

	// Held here: delivered at once, to that peer only.
	if err := h.SendTo(ctx, alice.ID(), edge.Text("to alice")); err != nil {
		t.Fatal(err)
	}
	if got := aliceIn.next(t); got.String() != "to alice" {
		t.Fatalf("alice got %q", got.Bytes)
	}
	bobIn.empty(t)

	// Held by the Gateway: posted directly, never relayed.
	if err := h.SendTo(ctx, "gw-1", edge.Text("to gw")); err != nil {
		t.Fatal(err)
	}
	// Held nowhere we know: relayed on the peer's own topic, for the
	// instance that holds it.
	if err := h.SendTo(ctx, "elsewhere", edge.Text("to elsewhere")); err != nil {
		t.Fatal(err)
	}
	if err := h.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if len(gw.sent) != 1 || gw.sent[0] != "gw-1:to gw" {
		t.Fatalf("gateway sent %v", gw.sent)
	}
	relayed := d.published()
	if len(relayed) != 1 || relayed[0].Topic != edge.PeerTopicPrefix+"elsewhere" || relayed[0].Namespace != "" {
		t.Fatalf("relayed %+v", relayed)
	}
	aliceIn.empty(t)
	bobIn.empty(t)
}

func TestInboundPeerTopicReachesOnlyThatPeer(t *testing.T) {
	d := newFakeDriver()
	h := newHub(t, edge.Options{Sync: d.sync})
	alice, aliceIn := join(t, h, "/ns", "t")
	_, bobIn := join(t, h, "/other", "t")
	d.deliver(edge.Message{Topic: edge.PeerTopicPrefix + alice.ID(), Data: edge.Text("dm")})
	if got := aliceIn.next(t); got.String() != "dm" {
		t.Fatalf("alice got %q", got.Bytes)
	}
	// A peer that is not here: nothing happens, nothing is kept.
	d.deliver(edge.Message{Topic: edge.PeerTopicPrefix + "gone", Data: edge.Text("dm")})
	aliceIn.empty(t)
	bobIn.empty(t)
}

func TestPeerTopicsAreReserved(t *testing.T) {
	h := newHub(t, edge.Options{})
	alice, _ := join(t, h, "/ns")
	topic := edge.PeerTopicPrefix + alice.ID()
	if err := alice.Subscribe(topic); !errors.Is(err, edge.ErrReservedTopic) {
		t.Fatalf("subscribe: %v", err)
	}
	if err := alice.Publish(context.Background(), topic, edge.Text("x")); !errors.Is(err, edge.ErrReservedTopic) {
		t.Fatalf("publish: %v", err)
	}
	if err := h.Publish(context.Background(), edge.Message{Topic: topic, Data: edge.Text("x")}); !errors.Is(err, edge.ErrReservedTopic) {
		t.Fatalf("hub publish: %v", err)
	}
	if err := h.SendTo(context.Background(), "nobody", edge.Text("x")); err != nil {
		t.Fatalf("SendTo a peer that does not exist: %v", err)
	}
}

func TestJoinRefusesAnIDInUse(t *testing.T) {
	h := newHub(t, edge.Options{})
	alice, _ := join(t, h, "/ns")
	if _, err := h.Join(alice.ID(), "/ns", newInbox()); err == nil {
		t.Fatal("a second peer joined with alice's id")
	}
	alice.Leave()
	if _, err := h.Join(alice.ID(), "/ns", newInbox()); err != nil {
		t.Fatalf("rejoin after leave: %v", err)
	}
}
