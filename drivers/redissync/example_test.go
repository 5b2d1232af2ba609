package redissync_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/edgesync/edgesync/drivers/redissync"
	"github.com/edgesync/edgesync/edge"
)

// Every instance of the application wires its Hub to the same Redis channel;
// a message published on one instance reaches the subscribers held by all.
func ExampleNew() {
	client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	defer client.Close() // the client stays the application's

	hub, err := edge.New(edge.Options{
		Sync: redissync.New(redissync.Options{Client: client, Channel: "chat"}),
		OnError: func(err error, info edge.ErrorInfo) {
			log.Printf("backplane %s: %v", info.Stage, err)
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer hub.Close()

	// Relayed to the subscribers of "lobby" in "/_ws" on every instance.
	err = hub.Publish(context.Background(), edge.Message{Namespace: "/_ws", Topic: "lobby", Data: edge.Text("hello")})
	if err != nil {
		log.Fatal(err)
	}
}

// A missing option is reported when the Hub starts.
func ExampleNew_validation() {
	client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	defer client.Close()

	_, err := edge.New(edge.Options{Sync: redissync.New(redissync.Options{Client: client})})
	fmt.Println(err)
	// Output: edge: sync: redissync: Options.Channel is empty
}

// A Registry keeps the connections that API Gateway holds, so that every
// instance, VM or Lambda function, finds the subscribers of a topic.
func ExampleNewRegistry() {
	client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	defer client.Close()

	reg, err := redissync.NewRegistry(redissync.RegistryOptions{Client: client, Channel: "chat"})
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	conn := edge.Conn{ID: "Ab12cDEFgHI=", Namespace: "/_ws", ConnectedAt: time.Now()}
	if err := reg.Add(ctx, conn); err != nil { // expires after DefaultTTL
		log.Fatal(err)
	}
	if err := reg.Subscribe(ctx, conn.ID, "lobby"); err != nil {
		log.Fatal(err)
	}
	err = reg.Subscribers(ctx, "/_ws", "lobby", func(id string) bool {
		fmt.Println("post to", id)
		return true
	})
	if err != nil {
		log.Fatal(err)
	}
}
