package memsync_test

import (
	"context"
	"fmt"

	"github.com/edgesync/edgesync/drivers/memsync"
	"github.com/edgesync/edgesync/edge"
)

// printer is a minimal edge.Endpoint: it hands each message to a channel.
type printer chan edge.Data

func (p printer) Deliver(d edge.Data) {
	select {
	case p <- d:
	default: // Deliver must never block; a full printer drops.
	}
}

func (p printer) Close(code int, reason string) error { return nil }

// Two hubs on one Bus and channel: a message published on one reaches a peer
// joined to the other.
func ExampleNew() {
	var bus memsync.Bus
	a, err := edge.New(edge.Options{Sync: memsync.New(memsync.Options{Bus: &bus, Channel: "chat"})})
	if err != nil {
		panic(err)
	}
	defer a.Close()
	b, err := edge.New(edge.Options{Sync: memsync.New(memsync.Options{Bus: &bus, Channel: "chat"})})
	if err != nil {
		panic(err)
	}
	defer b.Close()

	inbox := make(printer, 1)
	peer, err := b.Join(edge.NewID(), "/_ws", inbox)
	if err != nil {
		panic(err)
	}
	defer peer.Leave()
	if err := peer.Subscribe("lobby"); err != nil {
		panic(err)
	}

	msg := edge.Message{Namespace: "/_ws", Topic: "lobby", Data: edge.Text("hello from hub A")}
	if err := a.Publish(context.Background(), msg); err != nil {
		panic(err)
	}
	fmt.Println("peer on hub B received:", (<-inbox).String())
	// Output: peer on hub B received: hello from hub A
}

func ExampleNewRegistry() {
	ctx := context.Background()
	reg := memsync.NewRegistry(memsync.RegistryOptions{})

	for _, id := range []string{"conn-1", "conn-2"} {
		if err := reg.Add(ctx, edge.Conn{ID: id, Namespace: "/_ws", Attrs: map[string]string{"user": id}}); err != nil {
			panic(err)
		}
	}
	if err := reg.Subscribe(ctx, "conn-2", "lobby"); err != nil {
		panic(err)
	}

	err := reg.Subscribers(ctx, "/_ws", "lobby", func(id string) bool {
		fmt.Println("subscriber:", id)
		return true
	})
	if err != nil {
		panic(err)
	}
	topics, _ := reg.Topics(ctx, "conn-2")
	fmt.Println("topics of conn-2:", topics)
	// Output:
	// subscriber: conn-2
	// topics of conn-2: [lobby]
}
