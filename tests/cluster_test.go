package tests

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/coder/websocket"
	"github.com/edgesync/edgesync/drivers/memsync"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/internal/testenv"
)

// syncFactory gives each instance of one cluster its Sync.
type syncFactory func(t *testing.T) edge.Sync

func memsyncCluster(t *testing.T) syncFactory {
	bus := new(memsync.Bus)
	channel := testenv.Channel(t)
	return func(*testing.T) edge.Sync { return memsync.New(memsync.Options{Bus: bus, Channel: channel}) }
}

func TestClusterMemsync(t *testing.T) {
	testCluster(t, memsyncCluster(t))
}

// testCluster runs three instances, two chat clients on each in namespace
// /room and one in /other, and checks who receives what.
func testCluster(t *testing.T, newSync syncFactory) {
	instances := make([]*instance, 3)
	for i := range instances {
		instances[i] = startInstance(t, newSync(t))
	}
	var room, other []*client
	for _, in := range instances {
		room = append(room, dial(t, in.url("/room")), dial(t, in.url("/room")))
		other = append(other, dial(t, in.url("/other")))
	}
	// Each room client sends one text message: every other room client
	// receives it exactly once, the sender never.
	for i, c := range room {
		c.send(t, websocket.MessageText, fmt.Sprintf(`{"user":"u%d","text":"hi"}`, i))
	}
	for i, c := range room {
		want := make(map[string]bool)
		for j := range room {
			if j != i {
				want[fmt.Sprintf(`{"user":"u%d","text":"hi"}`, j)] = true
			}
		}
		for len(want) > 0 {
			f := c.next(t)
			if f.typ != websocket.MessageText || !want[f.data] {
				t.Fatalf("client %d: unexpected %v %q (own, duplicate or foreign)", i, f.typ, f.data)
			}
			delete(want, f.data)
		}
	}

	// Binary stays binary, byte for byte, across instances.
	bin := string([]byte{0, 1, 2, 0xfe, 0xff})
	room[0].send(t, websocket.MessageBinary, bin)
	for _, c := range room[1:] {
		if f := c.next(t); f.typ != websocket.MessageBinary || f.data != bin {
			t.Fatalf("binary arrived as %v %q", f.typ, f.data)
		}
	}

	// Namespaces isolate: the /other clients saw nothing of the room, and
	// nobody received anything more than the above.
	markAll(t, instances, append(append([]*client(nil), room...), other...), "end")

	// Closing one instance (its front end, then its hub) sends its peers
	// 1001; the others go on.
	ctx := context.Background()
	if err := instances[0].handler.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := instances[0].hub.Close(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*client{room[0], room[1], other[0]} {
		if code := c.closed(t); code != websocket.StatusGoingAway {
			t.Fatalf("close status %v, want 1001", code)
		}
	}
	if err := instances[0].hub.Publish(ctx, edge.Message{Topic: "chat", Data: edge.Text("x")}); !errors.Is(err, edge.ErrClosed) {
		t.Fatalf("publish on a closed hub: %v", err)
	}
	room[2].send(t, websocket.MessageText, "after close")
	for _, c := range room[3:] {
		if f := c.next(t); f.data != "after close" {
			t.Fatalf("got %q", f.data)
		}
	}
}

// markAll publishes marker from every instance with Hub.Publish on the empty
// namespace: the next thing every client receives must be that marker, once
// from each instance. Anything else is a duplicate or a leak across
// namespaces.
func markAll(t *testing.T, instances []*instance, clients []*client, marker string) {
	t.Helper()
	for _, in := range instances {
		if err := in.hub.Publish(context.Background(), edge.Message{Topic: "chat", Data: edge.Text(marker)}); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range clients {
		for range instances {
			if f := c.next(t); f.data != marker {
				t.Fatalf("client %d: got %q, want marker %q", i, f.data, marker)
			}
		}
	}
}
