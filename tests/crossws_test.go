package tests

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/edgesync/edgesync/drivers/pgsync"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/internal/testenv"
)

// nodeMessage is a message as the crossws peer prints and reads it.
type nodeMessage struct {
	Namespace string `json:"namespace"`
	Topic     string `json:"topic"`
	Binary    bool   `json:"binary"`
	Data      string `json:"data"` // base64 when Binary
	Ready     bool   `json:"ready,omitempty"`
}

func toNode(m edge.Message) nodeMessage {
	n := nodeMessage{Namespace: m.Namespace, Topic: m.Topic, Binary: m.Data.Binary, Data: string(m.Data.Bytes)}
	if n.Binary {
		n.Data = base64.StdEncoding.EncodeToString(m.Data.Bytes)
	}
	return n
}

// TestCrosswsNodeInterop runs a crossws instance on Node, with crossws's own
// Redis and Postgres sync drivers, on the channel of a Go hub: each receives
// what the other publishes, text as text and binary as binary.
func TestCrosswsNodeInterop(t *testing.T) {
	modules := os.Getenv("EDGESYNC_CROSSWS_NODE_MODULES")
	if modules == "" {
		t.Skip("set EDGESYNC_CROSSWS_NODE_MODULES to a node_modules folder holding crossws, redis and pg (.ci/run does)")
	}
	if _, err := exec.LookPath("node"); err != nil {
		t.Skip("node is not installed")
	}
	t.Run("redis", func(t *testing.T) {
		url, channel := testenv.RedisURL(t), testenv.Channel(t)
		testCrosswsInterop(t, "redis", url, channel, redisSync(t, url, channel))
	})
	t.Run("postgres", func(t *testing.T) {
		url, channel := testenv.PostgresURL(t), testenv.Channel(t)
		testCrosswsInterop(t, "postgres", url, channel, pgsync.New(pgsync.Options{ConnString: url, Channel: channel}))
	})
}

func testCrosswsInterop(t *testing.T, backend, url, channel string, sync edge.Sync) {
	t.Parallel()
	hub, err := edge.New(edge.Options{Sync: sync})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hub.Close() })
	in := &recorder{got: make(chan edge.Data, 16)}
	member, err := hub.Join(edge.NewID(), "/_ws", in)
	if err != nil {
		t.Fatal(err)
	}
	member.Subscribe("chat")
	member.Subscribe("news")

	node := exec.Command("node", "testdata/crossws-peer.mjs", backend, url, channel)
	var stderr bytes.Buffer
	node.Stderr = &stderr
	stdin, _ := node.StdinPipe()
	stdout, _ := node.StdoutPipe()
	if err := node.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan nodeMessage, 16)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var m nodeMessage
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				t.Errorf("crossws peer printed %q: %v", sc.Text(), err)
				continue
			}
			lines <- m
		}
	}()
	t.Cleanup(func() {
		stdin.Close()
		if err := node.Wait(); err != nil {
			t.Errorf("crossws peer: %v\n%s", err, stderr.String())
		}
	})
	next := func() nodeMessage {
		t.Helper()
		select {
		case m, ok := <-lines:
			if !ok {
				t.Fatalf("crossws peer ended:\n%s", stderr.String())
			}
			return m
		case <-time.After(wait):
			t.Fatalf("nothing from the crossws peer:\n%s", stderr.String())
		}
		return nodeMessage{}
	}
	if !next().Ready {
		t.Fatal("crossws peer did not say it was ready")
	}

	// Go to Node: text, binary, and a server-side publish to every namespace.
	sent := []edge.Message{
		{Namespace: "/_ws", Topic: "chat", Data: edge.Text(`{"user":"go","text":"héllo 🌍"}`)},
		{Namespace: "/_ws", Topic: "chat", Data: edge.Binary([]byte{0, 1, 2, 0xfe, 0xff})},
		{Namespace: "", Topic: "news", Data: edge.Text("to every namespace")},
	}
	for _, m := range sent {
		if err := hub.Publish(context.Background(), m); err != nil {
			t.Fatal(err)
		}
		in.next(t) // the Go peer's own copy, delivered locally
	}
	for _, m := range sent {
		if got, want := next(), toNode(m); got != want {
			t.Fatalf("crossws received %+v, want %+v", got, want)
		}
	}

	// Node to Go.
	for _, m := range []edge.Message{
		{Namespace: "/_ws", Topic: "chat", Data: edge.Text(`{"user":"node","text":"hi"}`)},
		{Namespace: "/_ws", Topic: "chat", Data: edge.Binary([]byte{0xff, 0, 0x80})},
	} {
		line, _ := json.Marshal(toNode(m))
		if _, err := io.WriteString(stdin, string(line)+"\n"); err != nil {
			t.Fatal(err)
		}
		if d := in.next(t); d.Binary != m.Data.Binary || !bytes.Equal(d.Bytes, m.Data.Bytes) {
			t.Fatalf("Go received %q (binary %v), want %q (binary %v)", d.Bytes, d.Binary, m.Data.Bytes, m.Data.Binary)
		}
	}
}

// recorder is an Endpoint that records what it is given.
type recorder struct{ got chan edge.Data }

func (r *recorder) Deliver(d edge.Data)     { r.got <- d }
func (r *recorder) Close(int, string) error { return nil }

func (r *recorder) next(t *testing.T) edge.Data {
	t.Helper()
	return testenv.Recv(t, r.got, wait, "a delivery")
}
