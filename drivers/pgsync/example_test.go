package pgsync_test

import (
	"context"
	"log"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/edgesync/edgesync/drivers/pgsync"
	"github.com/edgesync/edgesync/edge"
)

// Every instance of the application builds its Hub on the same channel; a
// message published on one reaches the subscribers of every other.
func ExampleNew() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, "postgres://postgres@127.0.0.1:5432/test?sslmode=disable")
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close() // the pool is the application's: the Hub leaves it open

	hub, err := edge.New(edge.Options{
		Sync: pgsync.New(pgsync.Options{Pool: pool, Channel: "chat"}),
		OnError: func(err error, info edge.ErrorInfo) {
			log.Printf("backplane %s: %v", info.Stage, err)
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer hub.Close()

	err = hub.Publish(ctx, edge.Message{Namespace: "/_ws", Topic: "lobby", Data: edge.Text("hello, every instance")})
	if err != nil {
		log.Fatal(err)
	}
}

// In a routed cluster an instance receives only the messages of the topics
// its peers subscribe to. Every instance of the channel sets Routed.
func ExampleNew_routed() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, "postgres://postgres@127.0.0.1:5432/test?sslmode=disable")
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()

	hub, err := edge.New(edge.Options{
		Sync: pgsync.New(pgsync.Options{Pool: pool, Channel: "chat", Routed: true}),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer hub.Close()

	// Reaches the instances with a subscriber of "lobby", in any
	// namespace, and costs the others nothing.
	err = hub.Publish(ctx, edge.Message{Topic: "lobby", Data: edge.Text("hello, lobby")})
	if err != nil {
		log.Fatal(err)
	}
}

// A Registry keeps the connections that API Gateway holds, shared by every
// instance that publishes to them.
func ExampleNewRegistry() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, "postgres://postgres@127.0.0.1:5432/test?sslmode=disable")
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()

	reg, err := pgsync.NewRegistry(pgsync.RegistryOptions{Pool: pool, Channel: "chat"})
	if err != nil {
		log.Fatal(err)
	}
	// Optional: the first use creates the tables too.
	if err := reg.Migrate(ctx); err != nil {
		log.Fatal(err)
	}

	err = reg.Add(ctx, edge.Conn{ID: "conn-1", Namespace: "/_ws", ConnectedAt: time.Now()})
	if err != nil {
		log.Fatal(err)
	}
	if err := reg.Subscribe(ctx, "conn-1", "lobby"); err != nil {
		log.Fatal(err)
	}
	err = reg.Subscribers(ctx, "/_ws", "lobby", func(id string) bool {
		log.Printf("post to %s", id)
		return true // go on
	})
	if err != nil {
		log.Fatal(err)
	}
}
