// Command hello is the smallest edgesync server: every message a client sends
// to ws://localhost:8080/_ws reaches every other client, on every instance.
// Alone it needs nothing; with EDGESYNC_REDIS_URL set, instances on other
// ports or hosts relay to each other over Redis.
package main

import (
	"context"
	"log"
	"net/http"
	"os"

	"github.com/redis/go-redis/v9"

	"github.com/edgesync/edgesync/drivers/redissync"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/longlived"
)

func main() {
	if err := run(); err != nil {
		log.Fatal(err)
	}
}

func run() error {
	var opts edge.Options // the zero value: alone, local delivery only
	if url := os.Getenv("EDGESYNC_REDIS_URL"); url != "" {
		ropts, err := redis.ParseURL(url)
		if err != nil {
			return err
		}
		ropts.ContextTimeoutEnabled = true // a relay on a dead connection gives up in time
		rdb := redis.NewClient(ropts)      // yours: edgesync never closes it
		defer rdb.Close()
		opts.Sync = redissync.New(redissync.Options{Client: rdb, Channel: "hello"})
	}
	hub, err := edge.New(opts)
	if err != nil {
		return err
	}

	ws := longlived.New(hub, edge.Hooks{
		Open: func(p edge.Peer) {
			if err := p.Subscribe(context.Background(), "room"); err != nil {
				log.Print(err)
			}
		},
		Message: func(p edge.Peer, d edge.Data) {
			// Every other subscriber of "room" in p's namespace, on every instance.
			if err := p.Publish(context.Background(), "room", d); err != nil {
				log.Print(err)
			}
		},
	})
	defer ws.Close(context.Background()) // 1001 Going Away to every peer, then the hub closes

	http.Handle("/_ws", ws)
	return http.ListenAndServe(":8080", nil)
}
