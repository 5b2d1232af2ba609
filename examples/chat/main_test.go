package main

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/examples/internal/chatroom"
	"github.com/edgesync/edgesync/internal/testenv"
	"github.com/edgesync/edgesync/longlived"
)

// wait bounds every wait in these tests; nothing sleeps.
const wait = 10 * time.Second

// startChat serves the chat as main does, and reports each peer once its
// Open hook, which subscribes it, has run.
func startChat(t *testing.T) (url string, opened <-chan edge.Peer) {
	t.Helper()
	url, opened, _ = startChatWith(t, config{})
	return url, opened
}

// startChatWith is startChat with the backplane cfg chooses; it also
// returns what the hub reported.
func startChatWith(t *testing.T, cfg config) (string, <-chan edge.Peer, *testenv.ErrorLog) {
	t.Helper()
	url, opened, log, _ := startChatHub(t, cfg)
	return url, opened, log
}

// startChatHub is startChatWith that also returns the hub.
func startChatHub(t *testing.T, cfg config) (string, <-chan edge.Peer, *testenv.ErrorLog, *edge.Hub) {
	t.Helper()
	log := testenv.NewErrorLog()
	backplane, hub, err := newHub(context.Background(), cfg, log.OnError)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(backplane.Close)
	t.Cleanup(func() { hub.Close() })
	hooks := chatroom.Hooks(hub, cmp.Or(cfg.name, "vm test"))
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
	return srv.URL, ch, log, hub
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
	for _, want := range []string{"<!doctype html>", `content="/_ws"`, `id="messages"`, `id="name"`, `id="text"`, "textContent"} {
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
	cfg, err := parseConfig([]string{"-addr", ":9000"}, func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.addr != ":9000" || cfg.redis != env["EDGESYNC_REDIS_URL"] || cfg.channel != "room" {
		t.Fatalf("config from the environment: %+v", cfg)
	}
	cfg, err = parseConfig([]string{"-redis", "", "-cluster", "/tmp/chat.sock", "-channel", "c"}, func(k string) string { return env[k] }, io.Discard)
	if err != nil || cfg.redis != "" || cfg.cluster != "/tmp/chat.sock" || cfg.channel != "c" {
		t.Fatalf("flags override the environment: %+v, %v", cfg, err)
	}
	if _, err := parseConfig([]string{"-postgres", "postgres://x", "-cluster", "s"}, func(string) string { return "" }, io.Discard); err == nil {
		t.Fatal("two backplanes accepted")
	}
	cfg, _ = parseConfig(nil, func(string) string { return "" }, io.Discard)
	if cfg.channel != "edgesync-chat" || cfg.addr != ":8080" {
		t.Fatalf("defaults: %+v", cfg)
	}
}

func TestParseClientRates(t *testing.T) {
	none := func(string) string { return "" }
	cfg, err := parseConfig(nil, none, io.Discard)
	if err != nil || cfg.clientRate != longlived.DefaultMessagesPerSecond || cfg.clientBytes != longlived.DefaultBytesPerSecond {
		t.Fatalf("default client rates %d, %d, %v", cfg.clientRate, cfg.clientBytes, err)
	}
	env := map[string]string{"EDGESYNC_CLIENT_RATE": "20000", "EDGESYNC_CLIENT_BYTES_RATE": "-1"}
	cfg, err = parseConfig(nil, func(k string) string { return env[k] }, io.Discard)
	if err != nil || cfg.clientRate != 20000 || cfg.clientBytes != -1 {
		t.Fatalf("client rates from the environment %d, %d, %v", cfg.clientRate, cfg.clientBytes, err)
	}
	cfg, err = parseConfig([]string{"-client-rate", "-1"}, func(k string) string { return env[k] }, io.Discard)
	if err != nil || cfg.clientRate != -1 {
		t.Fatalf("-client-rate -1: %d, %v", cfg.clientRate, err)
	}
	for _, args := range [][]string{{"-client-rate", "0"}, {"-client-bytes-rate", "-2"}, {"-client-rate", "x"}} {
		if _, err := parseConfig(args, none, io.Discard); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
	if _, err := parseConfig(nil, func(k string) string { return map[string]string{"EDGESYNC_CLIENT_RATE": "fast"}[k] }, io.Discard); err == nil {
		t.Error("EDGESYNC_CLIENT_RATE=fast accepted")
	}
}

// The tests below run the chat as users do: the built command, as an OS
// process.

// chatBinary builds the command once for the test binary.
var chatBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "chat-test")
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "chat")
	if out, err := exec.Command("go", "build", "-o", path, ".").CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return path, nil
})

func binary(t *testing.T) string {
	t.Helper()
	path, err := chatBinary()
	if err != nil {
		t.Fatal(err)
	}
	return path
}

var listening = regexp.MustCompile(`chat listening addr=(\S+)`)

// startProcess starts the chat on a free port, alone, and returns the
// process and its address once it listens; exited receives its end.
func startProcess(t *testing.T) (cmd *exec.Cmd, addr string, exited <-chan error) {
	t.Helper()
	cmd = exec.Command(binary(t), "-addr", "127.0.0.1:0")
	cmd.Env = testenv.ChildEnv()
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	addrs := make(chan string, 1)
	done := make(chan error, 1)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			t.Logf("chat: %s", sc.Text())
			if m := listening.FindStringSubmatch(sc.Text()); m != nil {
				addrs <- m[1]
			}
		}
		done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-finished
	})
	select {
	case addr = <-addrs:
	case err := <-done:
		t.Fatalf("chat exited before listening: %v", err)
	case <-time.After(wait):
		t.Fatal("chat did not listen")
	}
	return cmd, addr, done
}

// TestSIGTERMWithAnIdleConnection stops the chat as a user does, with a
// browser tab open: beside its WebSocket, a browser keeps a connection it
// opened ahead of need and has sent nothing on. The client gets 1001 at
// once and the process exits, without waiting the five seconds net/http
// gives a new connection before it counts as idle.
func TestSIGTERMWithAnIdleConnection(t *testing.T) {
	cmd, addr, exited := startProcess(t)

	// Dialled first, so accepted first: once the WebSocket is up, the
	// server holds this connection, in net/http's state StateNew.
	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://"+addr+"/_ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	closed := make(chan error, 1)
	go func() {
		for {
			if _, _, err := c.Read(context.Background()); err != nil {
				closed <- err
				return
			}
		}
	}()

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// A bound well below the five seconds of the stall, not a speed
	// target: the shutdown has nothing to wait for.
	const bound = 3 * time.Second
	timeout := time.After(bound)
	select {
	case err := <-closed:
		if got := websocket.CloseStatus(err); got != websocket.StatusGoingAway {
			t.Errorf("client closed with %v (%v), want 1001 Going Away", got, err)
		}
	case <-timeout:
		t.Fatalf("client not closed within %v of SIGTERM", bound)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("chat exited: %v, want status 0", err)
		}
	case <-timeout:
		t.Fatalf("chat still running %v after SIGTERM", bound)
	}
}

func TestHelp(t *testing.T) {
	for _, flag := range []string{"-h", "-help"} {
		var stdout, stderr strings.Builder
		cmd := exec.Command(binary(t), flag)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Errorf("chat %s: %v, want status 0; stderr:\n%s", flag, err, stderr.String())
		}
		out := stdout.String() + stderr.String()
		if !strings.Contains(out, "Usage: chat") || !strings.Contains(out, "-addr") || strings.Contains(out, "ERROR") {
			t.Errorf("chat %s printed:\n%s", flag, out)
		}
	}
}

func TestBadFlag(t *testing.T) {
	for _, args := range [][]string{{"-nope"}, {"-redis", "redis://x", "-cluster", "s"}} {
		var stderr strings.Builder
		cmd := exec.Command(binary(t), args...)
		cmd.Stderr = &stderr
		err := cmd.Run()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 2 {
			t.Errorf("chat %q: %v, want status 2", args, err)
		}
		if !strings.Contains(stderr.String(), "Usage: chat") {
			t.Errorf("chat %q printed no usage:\n%s", args, stderr.String())
		}
	}
}
