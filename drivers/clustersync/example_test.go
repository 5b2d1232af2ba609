package clustersync_test

import (
	"context"
	"log"
	"os"
	"path/filepath"

	"github.com/edgesync/edgesync/drivers/clustersync"
	"github.com/edgesync/edgesync/edge"
)

// Every process of the application on this host builds its Hub on the same
// socket: the first to start relays for the others, and another takes over
// if it exits.
func ExampleNew() {
	hub, err := edge.New(edge.Options{
		Sync: clustersync.New(clustersync.Options{
			Socket:  filepath.Join(os.TempDir(), "chat.sock"),
			Channel: "chat",
		}),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer hub.Close()

	// A publish reaches the subscribers held by every process of the host.
	err = hub.Publish(context.Background(), edge.Message{Namespace: "/chat", Topic: "lobby", Data: edge.Text("hello")})
	if err != nil {
		log.Print(err)
	}
}

// A supervisor can run the relay itself; the application's processes then
// connect to it.
func ExampleRelay() {
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	relay := &clustersync.Relay{
		Socket:  filepath.Join(os.TempDir(), "chat.sock"),
		OnError: func(err error) { log.Print(err) },
	}
	if err := relay.Serve(ctx); err != nil {
		log.Fatal(err)
	}
}
