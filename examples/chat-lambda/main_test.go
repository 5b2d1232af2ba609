package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/edgesync/edgesync/examples/internal/chatroom"
	"github.com/edgesync/edgesync/internal/testenv"
)

const wait = 10 * time.Second

// startLocal serves the chat under the emulator on a loopback port, as
// go run ./examples/chat-lambda does, and returns its address.
func startLocal(t *testing.T, cfg chatroom.Config) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l, err := newLocal(context.Background(), ln.Addr().String(), cfg, "lambda")
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	srv := &http.Server{Handler: l.handler}
	go srv.Serve(ln)
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		srv.Close()
	})
	return l.addr
}

func dial(t *testing.T, addr string) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://"+addr+"/local", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c
}

func send(t *testing.T, c *websocket.Conn, msg string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		t.Fatal(err)
	}
}

func expect(t *testing.T, c *websocket.Conn, want string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	typ, got, err := c.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if typ != websocket.MessageText || string(got) != want {
		t.Fatalf("received %v %q, want text %q", typ, got, want)
	}
}

// chat checks that a message reaches the room's other clients unchanged and
// never its sender.
func chat(t *testing.T, addr string) {
	ann, bob, cat := dial(t, addr), dial(t, addr), dial(t, addr)
	fromAnn := `{"user":"ann","text":"hi <b>all</b> \u2603"}`
	send(t, ann, fromAnn)
	expect(t, bob, fromAnn)
	expect(t, cat, fromAnn)
	// Had ann received her own message, it would come before bob's.
	fromBob := `{"user":"bob","text":"hello ann"}`
	send(t, bob, fromBob)
	expect(t, ann, fromBob)
	expect(t, cat, fromBob)
}

func TestChatInMemory(t *testing.T) {
	chat(t, startLocal(t, chatroom.Config{Channel: testenv.Channel(t)}))
}

func TestChatRedis(t *testing.T) {
	chat(t, startLocal(t, chatroom.Config{Redis: testenv.RedisURL(t), Channel: testenv.Channel(t)}))
}

func TestChatPostgres(t *testing.T) {
	chat(t, startLocal(t, chatroom.Config{Postgres: testenv.PostgresURL(t), Channel: testenv.Channel(t)}))
}

func TestPageConnectsToTheStage(t *testing.T) {
	addr := startLocal(t, chatroom.Config{Channel: testenv.Channel(t)})
	resp, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.Contains(string(body), `content="/local"`) {
		t.Fatalf("page %d:\n%s", resp.StatusCode, body)
	}
}

func TestTwoBackplanesRefused(t *testing.T) {
	if _, err := newFunction(context.Background(), chatroom.Config{Redis: "redis://x", Postgres: "postgres://y"}, "lambda", "", nil); err == nil {
		t.Fatal("two backplanes accepted")
	}
}
