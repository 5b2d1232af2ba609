// Command chat serves a chat room: a page at / and its WebSocket endpoint at
// /_ws. Every client is subscribed to topic "chat", and every message a
// client sends is published there unchanged, reaching every other client.
//
//	go run ./examples/chat [-addr :8080]
//
// Then open http://localhost:8080 in two browser windows. The page sends
// messages as JSON text, {"user": "…", "text": "…"}.
//
// Alone, the server delivers to its own clients. With a backplane, several
// servers form one chat:
//
//	go run ./examples/chat -addr :8080 -redis redis://127.0.0.1:6379/0
//	go run ./examples/chat -addr :8081 -redis redis://127.0.0.1:6379/0
//
// -redis URL, -postgres URL and -cluster SOCKET choose the backplane (one
// at most), -channel NAME the channel the servers share. Each flag defaults
// to an environment variable: EDGESYNC_REDIS_URL, EDGESYNC_POSTGRES_URL,
// EDGESYNC_CLUSTER_SOCKET and EDGESYNC_CHANNEL. chat -h prints them.
//
// -secret KEYS (or EDGESYNC_SECRET) signs the backplane: every server of the
// chat must be given the same secret, and drops what is not signed with it.
// KEYS is a comma-separated list, for rotation: the first signs, and any of
// them is accepted. To change the secret, run every server with "new,old",
// then "new".
//
//	EDGESYNC_SECRET=$(openssl rand -hex 32) go run ./examples/chat -redis redis://127.0.0.1:6379/0
//
// SIGINT (Ctrl-C) or SIGTERM stops the server: it stops listening, sends
// every WebSocket client 1001 Going Away at once, and exits when they have
// gone, within ten seconds at most. A second signal ends it at once.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/examples/internal/chatroom"
	"github.com/edgesync/edgesync/longlived"
)

// shutdownTimeout bounds the graceful shutdown.
const shutdownTimeout = 10 * time.Second

// config is what the command line and the environment choose.
type config struct {
	addr     string
	redis    string // Redis URL
	postgres string // Postgres connection string
	cluster  string // Unix socket path
	channel  string
	secret   string // comma-separated signing keys, the first signs
}

func main() {
	cfg, err := parseConfig(os.Args[1:], os.Getenv, os.Stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		os.Exit(0) // -h: the usage is printed
	case err != nil:
		os.Exit(2) // the error and the usage are printed
	}
	if err := run(cfg); err != nil {
		slog.Error("chat", "err", err)
		os.Exit(1)
	}
}

// parseConfig reads the flags, defaulting each to its environment variable.
// On an error, including flag.ErrHelp for -h, it has printed the usage to
// out.
func parseConfig(args []string, getenv func(string) string, out io.Writer) (config, error) {
	var cfg config
	fs := flag.NewFlagSet("chat", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: chat [flags]

Serves a chat room at http://ADDR/ and its WebSocket endpoint at /_ws.
With -redis, -postgres or -cluster (one at most), instances on the same
channel form one room. The backplane flags and -channel default to
EDGESYNC_REDIS_URL, EDGESYNC_POSTGRES_URL, EDGESYNC_CLUSTER_SOCKET and
EDGESYNC_CHANNEL. SIGINT or SIGTERM stops the server.

Flags:
`)
		fs.PrintDefaults()
	}
	fs.StringVar(&cfg.addr, "addr", ":8080", "address to listen on")
	fs.StringVar(&cfg.redis, "redis", getenv("EDGESYNC_REDIS_URL"), "relay over Redis at this URL")
	fs.StringVar(&cfg.postgres, "postgres", getenv("EDGESYNC_POSTGRES_URL"), "relay over Postgres at this URL")
	fs.StringVar(&cfg.cluster, "cluster", getenv("EDGESYNC_CLUSTER_SOCKET"), "relay between processes on this host over this Unix socket")
	fs.StringVar(&cfg.channel, "channel", cmp.Or(getenv("EDGESYNC_CHANNEL"), "edgesync-chat"), "channel the servers of one chat share")
	fs.StringVar(&cfg.secret, "secret", getenv("EDGESYNC_SECRET"), "sign the backplane with these comma-separated `keys`: the first signs, any is accepted (rotate with \"new,old\", then \"new\")")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	chosen := 0
	for _, v := range []string{cfg.redis, cfg.postgres, cfg.cluster} {
		if v != "" {
			chosen++
		}
	}
	if chosen > 1 {
		err := errors.New("choose one backplane: -redis, -postgres or -cluster")
		fmt.Fprintln(fs.Output(), err)
		fs.Usage()
		return config{}, err
	}
	return cfg, nil
}

// run serves the chat until SIGINT or SIGTERM, then shuts down: it stops
// listening, and at once sends every peer 1001 Going Away, closes the
// connections that never sent a request, and waits for requests under way;
// then it closes the hub and the backplane's client.
func run(cfg config) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	backplane, release, err := newSync(cfg)
	if err != nil {
		return err
	}
	defer release()
	hub, err := edge.New(edge.Options{Sync: backplane})
	if err != nil {
		return fmt.Errorf("start hub: %w", err)
	}
	defer hub.Close() // after the front end: whoever makes the hub closes it
	ws := longlived.New(hub, chatHooks())
	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: newServer(ws), ReadHeaderTimeout: 10 * time.Second}
	// Browsers open connections ahead of need; one that never sent a
	// request would hold Shutdown for five seconds, the time net/http
	// gives a new connection before it counts as idle.
	var fresh freshConns
	srv.ConnState = fresh.track
	srv.RegisterOnShutdown(fresh.closeAll)

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	slog.Info("chat listening", "addr", ln.Addr().String(), "backplane", backplaneName(cfg), "channel", cfg.channel)

	select {
	case err = <-served: // the listener failed
	case <-ctx.Done():
		stop() // a second signal ends the process at once
		slog.Info("chat shutting down")
	}
	shutdown, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	// The WebSocket connections are hijacked: Shutdown neither closes nor
	// waits for them, ws.Close does, at the same time.
	var serr, cerr error
	var wg sync.WaitGroup
	wg.Go(func() { serr = srv.Shutdown(shutdown) })
	wg.Go(func() { cerr = ws.Close(shutdown) })
	wg.Wait()
	if serr != nil {
		err = errors.Join(err, fmt.Errorf("shut down HTTP server: %w", serr))
	}
	if cerr != nil {
		err = errors.Join(err, cerr)
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// freshConns tracks the connections that have not sent a request yet, so
// that shutting down can close them at once: a client waiting on one has
// sent nothing, and retries on another connection.
type freshConns struct {
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool // shutting down: new connections are closed at once
}

// track is an http.Server.ConnState hook.
func (f *freshConns) track(c net.Conn, state http.ConnState) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case state == http.StateNew && f.closed:
		// Accepted as the listener closed.
		c.Close()
	case state == http.StateNew:
		if f.conns == nil {
			f.conns = make(map[net.Conn]struct{})
		}
		f.conns[c] = struct{}{}
	default:
		delete(f.conns, c)
	}
}

// closeAll closes every connection that has not sent a request, and those
// accepted from now on.
func (f *freshConns) closeAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	for c := range f.conns {
		c.Close()
	}
	clear(f.conns)
}

// newSync returns the Sync that relays messages between the instances of
// the chat server, and a function that releases what it opened. A nil Sync
// keeps this instance alone: it delivers to its own clients only.
func newSync(cfg config) (edge.Sync, func(), error) {
	b, err := chatroom.Open(context.Background(), chatroom.Config{
		Redis: cfg.redis, Postgres: cfg.postgres, Cluster: cfg.cluster, Channel: cfg.channel, Secret: cfg.secret,
	})
	if err != nil {
		return nil, nil, err
	}
	return b.Sync, b.Close, nil
}

// signingKeys returns the keys of -secret, a comma-separated list, or nil
// when it is empty.
func signingKeys(secret string) ([][]byte, error) { return chatroom.SigningKeys(secret) }

func backplaneName(cfg config) string {
	switch {
	case cfg.redis != "":
		return "redis"
	case cfg.postgres != "":
		return "postgres"
	case cfg.cluster != "":
		return "cluster"
	}
	return "none (in memory, this process only)"
}

// chatHooks are the chat room's hooks, the same as examples/chat-lambda's.
func chatHooks() edge.Hooks { return chatroom.Hooks() }

// newServer routes the page and the WebSocket endpoint.
func newServer(ws http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /{$}", chatroom.Page("/_ws"))
	mux.Handle("GET /_ws", ws)
	return mux
}
