package natssync_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/edgesync/edgesync/drivers/natssync"
	"github.com/edgesync/edgesync/edge"
)

// Every instance of the application wires its Hub to the same channel on
// one NATS server or cluster; a message published on one instance reaches
// the subscribers held by all.
func ExampleNew() {
	nc, err := nats.Connect("nats://127.0.0.1:4222",
		nats.NoEcho(),                    // this connection is the instance's own
		nats.MaxReconnects(-1),           // a backplane reconnects for ever
		nats.PingInterval(5*time.Second), // and finds a dead connection soon
	)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close() // the connection stays the application's

	hub, err := edge.New(edge.Options{
		Sync: natssync.New(natssync.Options{Conn: nc, Channel: "chat"}),
		OnError: func(err error, info edge.ErrorInfo) {
			log.Printf("backplane %s: %v", info.Stage, err)
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer hub.Close()

	// Published on the subject "chat.%2F_ws.lobby", and relayed to the
	// subscribers of "lobby" in "/_ws" on every instance.
	err = hub.Publish(context.Background(), edge.Message{Namespace: "/_ws", Topic: "lobby", Data: edge.Text("hello")})
	if err != nil {
		log.Fatal(err)
	}
}

// A channel must be a literal subject prefix: the driver adds the tokens of
// the namespace and the topic to it.
func ExampleNew_validation() {
	nc, err := nats.Connect("nats://127.0.0.1:4222", nats.RetryOnFailedConnect(true))
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()

	_, err = edge.New(edge.Options{Sync: natssync.New(natssync.Options{Conn: nc, Channel: "chat.>"})})
	fmt.Println(err)
	// Output: edge: sync: natssync: Options.Channel "chat.>": token 2 (">") is not a literal subject token: tokens are separated by '.', not empty, and free of '*', '>', white space, control characters and non-ASCII bytes
}
