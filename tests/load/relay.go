package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/coder/websocket"
)

// relayEnv, set to a listen address, makes the load tool's binary serve
// the trivial relay instead of running a load: the tool starts itself so
// for -target relay.
const relayEnv = "EDGESYNC_LOAD_RELAY"

// relay is the smallest server that keeps the chat's relay contract: every
// message a client sends reaches the other clients of its room (?room=)
// unchanged, and never comes back to the sender. It has no backplane, no
// limits and no commands. Measured against it, the load tool shows what
// its own clients can absorb on this machine, so that a chat figure can be
// told apart from the tool's ceiling.
type relay struct {
	mu    sync.Mutex
	rooms map[string]map[*websocket.Conn]struct{}
}

func (r *relay) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	c, err := websocket.Accept(w, req, nil)
	if err != nil {
		return
	}
	defer c.CloseNow()
	c.SetReadLimit(1 << 20)
	room := req.URL.Query().Get("room")
	r.mu.Lock()
	if r.rooms[room] == nil {
		r.rooms[room] = make(map[*websocket.Conn]struct{})
	}
	r.rooms[room][c] = struct{}{}
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.rooms[room], c)
		if len(r.rooms[room]) == 0 {
			delete(r.rooms, room)
		}
		r.mu.Unlock()
	}()
	ctx := req.Context()
	var others []*websocket.Conn
	for {
		typ, b, err := c.Read(ctx)
		if err != nil {
			return
		}
		others = others[:0]
		r.mu.Lock()
		for o := range r.rooms[room] {
			if o != c {
				others = append(others, o)
			}
		}
		r.mu.Unlock()
		for _, o := range others {
			_ = o.Write(ctx, typ, b) // a failed peer ends in its own reader
		}
	}
}

// serveRelayMain serves the relay at addr until SIGTERM or SIGINT and
// returns the exit code.
func serveRelayMain(addr string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := serveRelay(ctx, addr); err != nil {
		fmt.Fprintln(os.Stderr, "relay:", err)
		return 1
	}
	return 0
}

func serveRelay(ctx context.Context, addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil || !isLoopbackHost(host) {
		return fmt.Errorf("%s=%q: want a loopback address", relayEnv, addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: &relay{rooms: make(map[string]map[*websocket.Conn]struct{})}, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	fmt.Fprintf(os.Stderr, "relay listening addr=%s\n", ln.Addr())
	select {
	case err = <-served:
	case <-ctx.Done():
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown) // hijacked connections are not waited for
		err = <-served
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}
