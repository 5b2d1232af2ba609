// Command chat serves a chat room: a page at / and its WebSocket endpoint at
// /_ws. Every client is subscribed to topic "chat", and every message a
// client sends is published there unchanged, reaching every other client.
//
//	go run ./examples/chat [-addr :8080]
//
// Then open http://localhost:8080 in two browser windows. The page sends
// messages as JSON text, {"user": "…", "text": "…"}.
package main

import (
	"context"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/longlived"
)

// topic is the one topic of the chat room.
const topic = "chat"

// shutdownTimeout bounds the graceful shutdown.
const shutdownTimeout = 10 * time.Second

//go:embed index.html
var page []byte

func main() {
	addr := flag.String("addr", ":8080", "address to listen on")
	flag.Parse()
	if err := run(*addr); err != nil {
		slog.Error("chat", "err", err)
		os.Exit(1)
	}
}

// run serves the chat on addr until SIGINT or SIGTERM, then shuts down:
// the listener first, then every peer (1001 Going Away) and the hub.
func run(addr string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	backplane, err := newSync()
	if err != nil {
		return err
	}
	hub, err := edge.New(edge.Options{Sync: backplane})
	if err != nil {
		return fmt.Errorf("start hub: %w", err)
	}
	ws := longlived.New(hub, chatHooks())
	srv := &http.Server{Addr: addr, Handler: newServer(ws), ReadHeaderTimeout: 10 * time.Second}

	served := make(chan error, 1)
	go func() { served <- srv.ListenAndServe() }()
	slog.Info("chat listening", "addr", addr)

	select {
	case err = <-served: // the listener failed
	case <-ctx.Done():
		stop() // a second signal ends the process at once
		slog.Info("chat shutting down")
	}
	shutdown, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if serr := srv.Shutdown(shutdown); serr != nil {
		err = errors.Join(err, fmt.Errorf("shut down HTTP server: %w", serr))
	}
	if cerr := ws.Close(shutdown); cerr != nil {
		err = errors.Join(err, cerr)
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// newSync returns the Sync that relays messages between the instances of
// the chat server. nil keeps this instance alone: it delivers to its own
// clients only.
func newSync() (edge.Sync, error) {
	return nil, nil
}

// chatHooks subscribes every peer to the chat topic and publishes what it
// sends there, unchanged: every other peer of its namespace receives it.
func chatHooks() edge.Hooks {
	return edge.Hooks{
		Open: func(p edge.Peer) {
			if err := p.Subscribe(context.Background(), topic); err != nil {
				slog.Error("chat: subscribe", "peer", p.ID(), "err", err)
				_ = p.Close(1011, "cannot subscribe")
			}
		},
		Message: func(p edge.Peer, d edge.Data) {
			if err := p.Publish(context.Background(), topic, d); err != nil {
				slog.Error("chat: publish", "peer", p.ID(), "err", err)
			}
		},
		Error: func(p edge.Peer, err error) {
			slog.Warn("chat: peer error", "peer", p.ID(), "err", err)
		},
	}
}

// newServer routes the page and the WebSocket endpoint.
func newServer(ws http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		_, _ = w.Write(page)
	})
	mux.Handle("GET /_ws", ws)
	return mux
}
