package edge_test

import (
	"context"
	"fmt"

	"github.com/edgesync/edgesync/edge"
)

// printer is an Endpoint that prints what it is given. Front ends such as
// package longlived implement Endpoint with a WebSocket connection.
type printer string

func (p printer) Deliver(d edge.Data)            { fmt.Printf("%s got %s\n", p, d) }
func (p printer) Close(code int, _ string) error { fmt.Printf("%s closed %d\n", p, code); return nil }

func Example() {
	hub, err := edge.New(edge.Options{}) // alone: no backplane
	if err != nil {
		panic(err)
	}
	alice, _ := hub.Join(edge.NewID(), "/chat", printer("alice"))
	bob, _ := hub.Join(edge.NewID(), "/chat", printer("bob"))
	alice.Subscribe("lobby")
	bob.Subscribe("lobby")

	ctx := context.Background()
	alice.Publish(ctx, "lobby", edge.Text("hello from alice")) // not back to alice
	hub.Publish(ctx, edge.Message{Topic: "lobby", Data: edge.Text("server notice")})
	hub.Close()
	// Unordered output:
	// bob got hello from alice
	// alice got server notice
	// bob got server notice
	// alice closed 1001
	// bob closed 1001
}

func ExampleHub_Flush() {
	hub, _ := edge.New(edge.Options{})
	defer hub.Close()
	hub.Publish(context.Background(), edge.Message{Topic: "news", Data: edge.Text("x")})
	// A Lambda handler waits for relays and gateway deliveries before it returns.
	err := hub.Flush(context.Background())
	fmt.Println(err)
	// Output: <nil>
}
