package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/coder/websocket"

	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/examples/internal/chatroom"
	"github.com/edgesync/edgesync/internal/testenv"
	"github.com/edgesync/edgesync/longlived"
)

// roomClient is a client of the room with one reader.
type roomClient struct {
	conn *websocket.Conn
	in   chan string
	name string
}

// joinAt connects to wsURL with query and says hello; it returns once the
// peer is open, with its welcome.
func joinAt(t *testing.T, wsURL, query string) (*roomClient, welcome) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, wsURL+"?"+query, nil)
	if err != nil {
		t.Fatalf("dial %s?%s: %v", wsURL, query, err)
	}
	c := &roomClient{conn: conn, in: make(chan string, 64), name: query}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			_, b, err := conn.Read(context.Background())
			if err != nil {
				return
			}
			c.in <- string(b)
		}
	}()
	t.Cleanup(func() {
		conn.CloseNow()
		<-done
	})
	send(t, conn, `{"type":"hello"}`)
	var w welcome
	c.next(t, "welcome", &w)
	return c, w
}

type welcome struct{ ID, User, Instance string }

// next decodes the next message into v, which must have type typ; typ ""
// returns any message, raw.
func (c *roomClient) next(t *testing.T, typ string, v any) string {
	t.Helper()
	got := testenv.Recv(t, c.in, wait, typ+" message for "+c.name)
	if typ == "" {
		return got
	}
	var head struct{ Type string }
	if err := json.Unmarshal([]byte(got), &head); err != nil || head.Type != typ {
		t.Fatalf("%s received %s, want a message of type %q", c.name, got, typ)
	}
	if err := json.Unmarshal([]byte(got), v); err != nil {
		t.Fatalf("%s: %s: %v", c.name, got, err)
	}
	return got
}

// TestRoomUnderTheEmulator: the room's protocol on API Gateway: hello,
// who, dm, join and leave notices for events=1 clients only.
func TestRoomUnderTheEmulator(t *testing.T) {
	ws := "ws://" + startLocal(t, chatroom.Config{Channel: testenv.Channel(t)}) + "/local"
	ev, wev := joinAt(t, ws, "user=ev&events=1")
	plain, wp := joinAt(t, ws, "user=plain")
	if wev.Instance != "lambda" || wev.User != "ev" || wp.ID == wev.ID {
		t.Fatalf("welcomes %+v, %+v", wev, wp)
	}
	var n struct{ Type, ID, User, Instance string }
	ev.next(t, "join", &n)
	if n.ID != wp.ID || n.User != "plain" || n.Instance != "lambda" {
		t.Fatalf("join %+v, want plain's", n)
	}

	plain.send(t, `{"type":"who"}`)
	var p struct{ Peers []welcome }
	plain.next(t, "presence", &p)
	if len(p.Peers) != 2 || p.Peers[0] != wev || p.Peers[1] != wp {
		t.Fatalf("who: %+v", p.Peers)
	}

	plain.send(t, `{"type":"dm","to":"`+wev.ID+`","text":"psst"}`)
	var d struct{ From, To, User, Text string }
	ev.next(t, "dm", &d)
	if d.From != wp.ID || d.User != "plain" || d.Text != "psst" {
		t.Fatalf("ev received %+v", d)
	}
	plain.next(t, "dm-sent", &d)
	plain.send(t, `{"type":"dm","to":"AAAAAAAAAAAAAAA=","text":"nobody"}`)
	plain.next(t, "dm-sent", &d) // silent: nothing fails, nobody receives it

	plain.conn.Close(websocket.StatusNormalClosure, "")
	ev.next(t, "leave", &n)
	if n.ID != wp.ID || n.User != "plain" {
		t.Fatalf("leave %+v", n)
	}
	// A plain client gets the relay alone: not the join, nor the leave.
	plain2, _ := joinAt(t, ws, "user=plain2")
	ev.next(t, "join", &n)
	ev2, _ := joinAt(t, ws, "user=ev2&events=1")
	ev.next(t, "join", &n)
	ev2.conn.Close(websocket.StatusNormalClosure, "")
	ev.next(t, "leave", &n)
	msg := `{"user":"ev","text":"after"}`
	send(t, ev.conn, msg)
	if got := plain2.next(t, "", nil); got != msg {
		t.Fatalf("plain2 received %s, want %s", got, msg)
	}
}

func (c *roomClient) send(t *testing.T, msg string) { t.Helper(); send(t, c.conn, msg) }

func TestBadRoomUnderTheEmulator(t *testing.T) {
	addr := startLocal(t, chatroom.Config{Channel: testenv.Channel(t)})
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	_, resp, err := websocket.Dial(ctx, "ws://"+addr+"/local?room=a/b", nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("dial a bad room: %v, %+v; want 400", err, resp)
	}
	body, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(body), "room") {
		t.Fatalf("400 body %q", body)
	}
}

// TestLambdaListsLongLivedPeers: on one Redis, the function lists the
// clients that a long-lived instance records in the presence Registry, and
// a dm from a gateway-held client reaches one of them through the
// backplane.
func TestLambdaListsLongLivedPeers(t *testing.T) {
	cfg := chatroom.Config{Redis: testenv.RedisURL(t), Channel: testenv.Channel(t)}
	api := "ws://" + startLocal(t, cfg) + "/local"

	// A long-lived instance, as examples/chat runs one without a Gateway.
	backplane, err := chatroom.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(backplane.Close)
	hub, err := edge.New(edge.Options{Sync: backplane.Sync, Presence: backplane.Presence})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hub.Close() })
	h := longlived.New(hub, chatroom.Hooks(hub, "vm b"))
	srv := httptest.NewServer(h)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		h.Close(ctx)
		srv.Close()
	})

	ann, wa := joinAt(t, "ws"+strings.TrimPrefix(srv.URL, "http"), "user=ann&events=1")
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := hub.Flush(ctx); err != nil { // ann's presence record is written
		t.Fatal(err)
	}
	bob, wb := joinAt(t, api, "user=bob&events=1")
	var n struct{ Type, ID, User string }
	ann.next(t, "join", &n) // through the backplane
	if n.ID != wb.ID {
		t.Fatalf("ann received the join %+v, want bob's", n)
	}

	bob.send(t, `{"type":"who"}`)
	var p struct{ Peers []welcome }
	bob.next(t, "presence", &p)
	want := []welcome{{wa.ID, "ann", "vm b"}, {wb.ID, "bob", "lambda"}}
	if len(p.Peers) != 2 || p.Peers[0] != want[0] || p.Peers[1] != want[1] {
		t.Fatalf("who on the Lambda: %+v, want %+v", p.Peers, want)
	}

	bob.send(t, `{"type":"dm","to":"`+wa.ID+`","text":"hi ann"}`)
	var d struct{ From, User, Text string }
	ann.next(t, "dm", &d)
	if d.From != wb.ID || d.User != "bob" || d.Text != "hi ann" {
		t.Fatalf("ann received %+v", d)
	}
	bob.next(t, "dm-sent", &d)
}
