package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/longlived"
)

// wait bounds every wait in these tests; nothing sleeps.
const wait = 10 * time.Second

// startChat serves the chat as main does, and reports each peer once its
// Open hook, which subscribes it, has run.
func startChat(t *testing.T) (url string, opened <-chan edge.Peer) {
	t.Helper()
	backplane, release, err := newSync(config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(release)
	hub, err := edge.New(edge.Options{Sync: backplane})
	if err != nil {
		t.Fatal(err)
	}
	hooks := chatHooks()
	open := hooks.Open
	ch := make(chan edge.Peer, 8)
	hooks.Open = func(p edge.Peer) {
		open(p)
		ch <- p
	}
	ws := longlived.New(hub, hooks)
	srv := httptest.NewServer(newServer(ws))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		if err := ws.Close(ctx); err != nil {
			t.Errorf("close: %v", err)
		}
		srv.Close()
	})
	return srv.URL, ch
}

func dial(t *testing.T, url string, opened <-chan edge.Peer) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(url, "http")+"/_ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.CloseNow() })
	select {
	case <-opened:
	case <-time.After(wait):
		t.Fatal("peer not opened")
	}
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

func TestMessageReachesOthersUnchanged(t *testing.T) {
	url, opened := startChat(t)
	ann := dial(t, url, opened)
	bob := dial(t, url, opened)
	cat := dial(t, url, opened)

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

func TestPage(t *testing.T) {
	url, _ := startChat(t)
	resp, err := http.Get(url + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET / answered %d %q, want 200 text/html", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	for _, want := range []string{"<!doctype html>", `"/_ws"`, `id="messages"`, `id="name"`, `id="text"`, "textContent"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("page lacks %s", want)
		}
	}

	resp, err = http.Get(url + "/missing")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /missing answered %d, want 404", resp.StatusCode)
	}
}

func TestParseConfig(t *testing.T) {
	env := map[string]string{"EDGESYNC_REDIS_URL": "redis://127.0.0.1:6379/0", "EDGESYNC_CHANNEL": "room"}
	cfg, err := parseConfig([]string{"-addr", ":9000"}, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if cfg.addr != ":9000" || cfg.redis != env["EDGESYNC_REDIS_URL"] || cfg.channel != "room" {
		t.Fatalf("config from the environment: %+v", cfg)
	}
	cfg, err = parseConfig([]string{"-redis", "", "-cluster", "/tmp/chat.sock", "-channel", "c"}, func(k string) string { return env[k] })
	if err != nil || cfg.redis != "" || cfg.cluster != "/tmp/chat.sock" || cfg.channel != "c" {
		t.Fatalf("flags override the environment: %+v, %v", cfg, err)
	}
	if _, err := parseConfig([]string{"-postgres", "postgres://x", "-cluster", "s"}, func(string) string { return "" }); err == nil {
		t.Fatal("two backplanes accepted")
	}
	cfg, _ = parseConfig(nil, func(string) string { return "" })
	if cfg.channel != "edgesync-chat" || cfg.addr != ":8080" {
		t.Fatalf("defaults: %+v", cfg)
	}
}
