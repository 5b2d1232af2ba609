package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/coder/websocket"

	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/examples/internal/chatroom"
	"github.com/edgesync/edgesync/examples/internal/chattest"
	"github.com/edgesync/edgesync/internal/testenv"
	"github.com/edgesync/edgesync/longlived"
)

// TestRoomUnderTheEmulator: the room's protocol on API Gateway: hello,
// who, dm, join and leave notices for events=1 clients only.
func TestRoomUnderTheEmulator(t *testing.T) {
	ws := "ws://" + startLocal(t, chatroom.Config{Channel: testenv.Channel(t)}) + "/local"
	ev, wev := chattest.Join(t, ws, "user=ev&events=1")
	plain, wp := chattest.Join(t, ws, "user=plain")
	if wev.Instance != "lambda" || wev.User != "ev" || wp.ID == wev.ID {
		t.Fatalf("welcomes %+v, %+v", wev, wp)
	}
	var n chattest.Notice
	ev.NextOf(t, "join", &n)
	if n.ID != wp.ID || n.User != "plain" || n.Instance != "lambda" {
		t.Fatalf("join %+v, want plain's", n)
	}

	plain.Send(t, `{"type":"who"}`)
	var p chattest.Presence
	plain.NextOf(t, "presence", &p)
	if len(p.Peers) != 2 || p.Peers[0] != wev || p.Peers[1] != wp {
		t.Fatalf("who: %+v", p.Peers)
	}

	plain.Send(t, `{"type":"dm","to":"`+wev.ID+`","text":"psst"}`)
	var d chattest.DM
	ev.NextOf(t, "dm", &d)
	if d.From != wp.ID || d.User != "plain" || d.Text != "psst" {
		t.Fatalf("ev received %+v", d)
	}
	plain.NextOf(t, "dm-sent", &d)
	plain.Send(t, `{"type":"dm","to":"AAAAAAAAAAAAAAA=","text":"nobody"}`)
	plain.NextOf(t, "dm-sent", &d) // silent: nothing fails, nobody receives it

	plain.Conn.Close(websocket.StatusNormalClosure, "")
	ev.NextOf(t, "leave", &n)
	if n.ID != wp.ID || n.User != "plain" {
		t.Fatalf("leave %+v", n)
	}
	// A plain client gets the relay alone: not the join, nor the leave.
	plain2, _ := chattest.Join(t, ws, "user=plain2")
	ev.NextOf(t, "join", &n)
	ev2, _ := chattest.Join(t, ws, "user=ev2&events=1")
	ev.NextOf(t, "join", &n)
	ev2.Conn.Close(websocket.StatusNormalClosure, "")
	ev.NextOf(t, "leave", &n)
	msg := `{"user":"ev","text":"after"}`
	ev.Send(t, msg)
	plain2.Expect(t, msg)
}

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

	ann, wa := chattest.Join(t, "ws"+strings.TrimPrefix(srv.URL, "http"), "user=ann&events=1")
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := hub.Flush(ctx); err != nil { // ann's presence record is written
		t.Fatal(err)
	}
	bob, wb := chattest.Join(t, api, "user=bob&events=1")
	var n chattest.Notice
	ann.NextOf(t, "join", &n) // through the backplane
	if n.ID != wb.ID {
		t.Fatalf("ann received the join %+v, want bob's", n)
	}

	bob.Send(t, `{"type":"who"}`)
	var p chattest.Presence
	bob.NextOf(t, "presence", &p)
	want := []chattest.Peer{
		{ID: wa.ID, User: "ann", Instance: "vm b"},
		{ID: wb.ID, User: "bob", Instance: "lambda"},
	}
	if len(p.Peers) != 2 || p.Peers[0] != want[0] || p.Peers[1] != want[1] {
		t.Fatalf("who on the Lambda: %+v, want %+v", p.Peers, want)
	}

	bob.Send(t, `{"type":"dm","to":"`+wa.ID+`","text":"hi ann"}`)
	var d chattest.DM
	ann.NextOf(t, "dm", &d)
	if d.From != wb.ID || d.User != "bob" || d.Text != "hi ann" {
		t.Fatalf("ann received %+v", d)
	}
	bob.NextOf(t, "dm-sent", &d)
}
