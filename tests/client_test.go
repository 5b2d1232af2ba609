package tests

import (
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/longlived"
)

// wait bounds every wait in these tests; nothing sleeps.
const wait = 15 * time.Second

// frame is one message a client received.
type frame struct {
	typ  websocket.MessageType
	data string
}

// client is a real WebSocket client whose reads land on a channel.
type client struct {
	conn   *websocket.Conn
	frames chan frame
	done   chan error // the read error that ended the connection
}

func dial(t *testing.T, url string) *client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	c := readClient(t, conn, 4096)
	// The server answers a ping from its read loop, which starts once the
	// Open hook has run: after the pong, the peer is subscribed.
	if err := conn.Ping(ctx); err != nil {
		t.Fatalf("ping %s: %v", url, err)
	}
	return c
}

// readClient reads conn into a client whose frames channel holds up to
// buffer messages. The connection is closed when the test ends.
func readClient(t *testing.T, conn *websocket.Conn, buffer int) *client {
	conn.SetReadLimit(1 << 20)
	c := &client{conn: conn, frames: make(chan frame, buffer), done: make(chan error, 1)}
	go func() {
		for {
			typ, data, err := conn.Read(context.Background())
			if err != nil {
				c.done <- err
				return
			}
			c.frames <- frame{typ, string(data)}
		}
	}()
	t.Cleanup(func() { conn.CloseNow() })
	return c
}

func (c *client) send(t *testing.T, typ websocket.MessageType, data string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := c.conn.Write(ctx, typ, []byte(data)); err != nil {
		t.Fatalf("write: %v", err)
	}
}

func (c *client) next(t *testing.T) frame {
	t.Helper()
	select {
	case f := <-c.frames:
		return f
	case err := <-c.done:
		t.Fatalf("connection ended while waiting for a message: %v", err)
	case <-time.After(wait):
		t.Fatal("no message arrived")
	}
	return frame{}
}

// closed waits for the server to close the connection and returns the status.
func (c *client) closed(t *testing.T) websocket.StatusCode {
	t.Helper()
	for {
		select {
		case <-c.frames:
		case err := <-c.done:
			return websocket.CloseStatus(err)
		case <-time.After(wait):
			t.Fatal("connection not closed")
		}
	}
}

// instance is one hub behind its own WebSocket server.
type instance struct {
	hub     *edge.Hub
	handler *longlived.Handler
	server  *httptest.Server
}

// chatHooks subscribes every peer to "chat" and publishes what it sends
// there, as examples/chat does.
func chatHooks() edge.Hooks {
	return edge.Hooks{
		Open: func(p edge.Peer) { p.Subscribe(context.Background(), "chat") },
		Message: func(p edge.Peer, d edge.Data) {
			p.Publish(context.Background(), "chat", d)
		},
	}
}

func startInstance(t *testing.T, sync edge.Sync) *instance {
	t.Helper()
	return startInstanceWith(t, edge.Options{Sync: sync, OnError: func(err error, info edge.ErrorInfo) {
		t.Logf("backplane error at %s: %v", info.Stage, err)
	}})
}

func startInstanceWith(t *testing.T, opts edge.Options) *instance {
	t.Helper()
	hub, err := edge.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hub.Close() })
	h := longlived.New(hub, chatHooks())
	srv := httptest.NewServer(h)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		if err := h.Close(ctx); err != nil && !errors.Is(err, edge.ErrClosed) {
			t.Errorf("close: %v", err)
		}
		srv.Close()
	})
	return &instance{hub: hub, handler: h, server: srv}
}

func (in *instance) url(path string) string {
	return "ws" + strings.TrimPrefix(in.server.URL, "http") + path
}
