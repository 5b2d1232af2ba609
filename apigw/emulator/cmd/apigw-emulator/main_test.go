package main

import (
	"bufio"
	"context"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

func TestRun(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command to build the test function")
	}
	bin := filepath.Join(t.TempDir(), "bootstrap")
	if out, err := exec.Command("go", "build", "-o", bin, "../../testdata/fn").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := run(ctx, []string{"-addr", "127.0.0.1:0", "-procs", "2", "-routes", "join", "-route-responses", "$default", "--", bin}, pw, io.Discard)
		pw.Close()
		done <- err
	}()
	lines := make(chan string, 16)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	next := func() string {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("the command ended: %v", <-done)
			}
			return l
		case <-time.After(10 * time.Second):
			t.Fatal("the command printed nothing")
		}
		return ""
	}
	wsURL, ok := strings.CutPrefix(next(), "WebSocket URL: ")
	if !ok || !strings.HasPrefix(wsURL, "ws://127.0.0.1:") || !strings.HasSuffix(wsURL, "/local") {
		t.Fatalf("WebSocket URL line: %q", wsURL)
	}
	if l := next(); l != "Management endpoint: http"+strings.TrimPrefix(wsURL, "ws") {
		t.Fatalf("management endpoint line: %q", l)
	}

	dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer dcancel()
	c, _, err := websocket.Dial(dctx, wsURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	// $default has a route response: the function's answer comes back.
	if err := c.Write(dctx, websocket.MessageText, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if _, b, err := c.Read(dctx); err != nil || string(b) != "echo:hi" {
		t.Fatalf("read %q, %v", b, err)
	}
	// The function posts through EDGESYNC_APIGW_ENDPOINT.
	if err := c.Write(dctx, websocket.MessageText, []byte("post")); err != nil {
		t.Fatal(err)
	}
	if _, b, err := c.Read(dctx); err != nil || string(b) != "posted" {
		t.Fatalf("read %q, %v", b, err)
	}

	cancel() // as SIGINT does
	if _, _, err := c.Read(dctx); websocket.CloseStatus(err) != websocket.StatusGoingAway {
		t.Errorf("client closed with %v, want 1001", err)
	}
	for range lines {
	}
	if err := <-done; err != nil {
		t.Errorf("run: %v", err)
	}
}

func TestRunUsage(t *testing.T) {
	if err := run(context.Background(), []string{"-addr", "127.0.0.1:0"}, io.Discard, io.Discard); err == nil {
		t.Error("run without a command succeeded")
	}
}
