// Command hello is the smallest edgesync server: every message a client sends
// to ws://localhost:8080/_ws reaches every other client, on every instance.
// Alone it needs nothing; with EDGESYNC_REDIS_URL set, instances on other
// ports (-addr) or hosts relay to each other over Redis, on the channel
// EDGESYNC_CHANNEL ("hello" if unset).
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/edgesync/edgesync/drivers/redissync"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/longlived"
)

func main() {
	addr := flag.String("addr", ":8080", "address to listen on")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *addr); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, addr string) error {
	var opts edge.Options // the zero value: alone, local delivery only
	if url := os.Getenv("EDGESYNC_REDIS_URL"); url != "" {
		ropts, err := redis.ParseURL(url)
		if err != nil {
			return err
		}
		ropts.ContextTimeoutEnabled = true // a relay on a dead connection gives up in time
		rdb := redis.NewClient(ropts)      // yours: edgesync never closes it
		defer rdb.Close()
		channel := cmp.Or(os.Getenv("EDGESYNC_CHANNEL"), "hello")
		opts.Sync = redissync.New(redissync.Options{Client: rdb, Channel: channel})
	}
	hub, err := edge.New(opts)
	if err != nil {
		return err
	}
	defer hub.Close() // whoever makes the hub closes it, after its front ends

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

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/_ws", ws)
	srv := &http.Server{Handler: mux}
	go func() {
		<-ctx.Done() // Ctrl-C or SIGTERM
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = ws.Close(shutdown) // 1001 Going Away to every peer
		_ = srv.Close()
	}()
	log.Printf("hello listening on %s", ln.Addr())
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
