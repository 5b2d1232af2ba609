package chatroom_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/edgesync/edgesync/drivers/memsync"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/examples/internal/chatroom"
	"github.com/edgesync/edgesync/examples/internal/chattest"
	"github.com/edgesync/edgesync/longlived"
)

// wait bounds every wait in these tests; nothing sleeps.
const wait = 10 * time.Second

func TestCleanUser(t *testing.T) {
	for in, want := range map[string]string{
		"ann":                          "ann",
		"  ann  ":                      "ann",
		"":                             "anonymous",
		" \t\n":                        "anonymous",
		"a\x00n\x1bn\u0085":            "ann",
		"bad\xffutf8":                  "badutf8",
		"Łukasz ☃":                     "Łukasz ☃",
		strings.Repeat("é", 40):        strings.Repeat("é", 32),
		strings.Repeat("a", 31) + " b": strings.Repeat("a", 31),
	} {
		if got := chatroom.CleanUser(in); got != want {
			t.Errorf("CleanUser(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseQuery(t *testing.T) {
	p, err := chatroom.ParseQuery(url.Values{"user": {" ann "}, "room": {"Team_1-a"}, "events": {"1"}})
	if err != nil || p != (chatroom.Params{User: "ann", Room: "Team_1-a", Events: true}) || p.Namespace() != "/chat/Team_1-a" {
		t.Fatalf("ParseQuery = %+v (%s), %v", p, p.Namespace(), err)
	}
	p, err = chatroom.ParseQuery(url.Values{"room": {""}, "events": {"yes"}})
	if err != nil || p != (chatroom.Params{User: "anonymous"}) || p.Namespace() != "/chat" {
		t.Fatalf("ParseQuery without a room = %+v (%s), %v", p, p.Namespace(), err)
	}
	for _, room := range []string{"a b", "../x", "a/b", "é", strings.Repeat("r", 33), "x%00"} {
		_, err := chatroom.ParseQuery(url.Values{"room": {room}})
		var rej *edge.Reject
		if !errors.As(err, &rej) || rej.StatusCode() != http.StatusBadRequest {
			t.Errorf("room %q: %v, want a 400 Reject", room, err)
		}
	}
}

// startRoom serves the room on a hub alone, on a long-lived server, and
// returns its WebSocket URL.
func startRoom(t *testing.T) string {
	t.Helper()
	_, u := serveRoom(t, edge.Options{}, "vm test")
	return u
}

// serveRoom serves the room, as instance, on a hub made with opts on a
// long-lived server, and returns the hub and its WebSocket URL; both are
// closed at cleanup.
func serveRoom(t *testing.T, opts edge.Options, instance string) (*edge.Hub, string) {
	t.Helper()
	hub, err := edge.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ws := longlived.New(hub, chatroom.Hooks(hub, instance))
	srv := httptest.NewServer(ws)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		if err := ws.Close(ctx); err != nil {
			t.Errorf("close: %v", err)
		}
		srv.Close()
		hub.Close()
	})
	return hub, "ws" + strings.TrimPrefix(srv.URL, "http") + "/"
}

// startRoutedRooms serves the room on two hubs of a routed in-memory
// cluster, each on a long-lived server, and returns the hubs and their
// WebSocket URLs.
func startRoutedRooms(t *testing.T) (hubs [2]*edge.Hub, urls [2]string) {
	t.Helper()
	bus := new(memsync.Bus)
	for i := range hubs {
		opts := edge.Options{Sync: memsync.New(memsync.Options{Bus: bus, Channel: t.Name(), Routed: true})}
		hubs[i], urls[i] = serveRoom(t, opts, fmt.Sprintf("vm %d", i))
	}
	return hubs, urls
}

func TestTopics(t *testing.T) {
	for ns, want := range map[string][2]string{
		"/chat":     {"chat", "chat-events"},
		"/chat/one": {"chat/one", "chat-events/one"},
	} {
		if chat, events := chatroom.Topics(ns); chat != want[0] || events != want[1] {
			t.Errorf("Topics(%q) = %q, %q, want %q", ns, chat, events, want)
		}
	}
}

// TestRoomsRouteApart: in a routed cluster, an instance receives the
// messages of the rooms its clients are in, and no other room's.
func TestRoomsRouteApart(t *testing.T) {
	hubs, urls := startRoutedRooms(t)
	one, _ := chattest.Join(t, urls[0], "user=one&room=one")
	two, _ := chattest.Join(t, urls[0], "user=two&room=two")
	away, _ := chattest.Join(t, urls[1], "user=away&room=two")
	one.Send(t, "in one")
	two.Send(t, "in two")
	away.Expect(t, "in two") // relayed after "in one", in order
	if got := hubs[1].Stats().Received; got != 1 {
		t.Fatalf("the instance without room one received %d messages from the backplane, want 1", got)
	}
}

// TestHelloAndWho: a client learns its id with hello, and who lists every
// peer of the room, the asker included, sorted by user.
func TestHelloAndWho(t *testing.T) {
	u := startRoom(t)
	bob, wb := chattest.Join(t, u, "user=bob")
	ann, wa := chattest.Join(t, u, "user=ann")
	if wa.User != "ann" || wa.Instance != "vm test" || wa.ID == "" || wb.User != "bob" || wa.ID == wb.ID {
		t.Fatalf("welcomes %+v, %+v", wa, wb)
	}
	for _, c := range []*chattest.Client{ann, bob} {
		c.Send(t, `{"type":"who"}`)
		var p chattest.Presence
		c.NextOf(t, "presence", &p)
		if len(p.Peers) != 2 || p.Peers[0].ID != wa.ID || p.Peers[0].User != "ann" || p.Peers[0].Instance != "vm test" ||
			p.Peers[1].ID != wb.ID || p.Peers[1].User != "bob" {
			t.Fatalf("%s: presence %+v", c.Name, p)
		}
	}
	_, wc := chattest.Join(t, u, "user="+url.QueryEscape(" \x07"))
	if wc.User != "anonymous" {
		t.Fatalf("a blank user is %q, want anonymous", wc.User)
	}
}

// TestEventsOnlyWithEvents: join and leave notices reach the clients that
// asked for them, never the peer itself, and never a plain client, which
// receives the relay alone.
func TestEventsOnlyWithEvents(t *testing.T) {
	u := startRoom(t)
	ev, _ := chattest.Join(t, u, "user=ev&events=1") // its own join, had it one, would come before its welcome
	plain, _ := chattest.Join(t, u, "user=plain")
	var n chattest.Notice
	ev.NextOf(t, "join", &n)
	if n.User != "plain" {
		t.Fatalf("join %+v, want plain's", n)
	}
	cat, wc := chattest.Join(t, u, "user=cat")
	ev.NextOf(t, "join", &n)
	if n.ID != wc.ID || n.User != "cat" || n.Instance != "vm test" || n.At == 0 {
		t.Fatalf("join %+v, want cat's (%s)", n, wc.ID)
	}
	msg := `{"user":"cat","text":"hi","at":1}`
	cat.Send(t, msg)
	plain.Expect(t, msg) // had it received the joins, they would come first
	ev.Expect(t, msg)

	cat.Conn.Close(websocket.StatusNormalClosure, "")
	ev.NextOf(t, "leave", &n)
	if n.ID != wc.ID || n.User != "cat" {
		t.Fatalf("leave %+v, want cat's", n)
	}
	msg = `{"user":"ev","text":"bye cat","at":2}`
	ev.Send(t, msg)
	plain.Expect(t, msg) // and not the leave before it
}

// TestRelayUnchanged: what is not a command reaches every other client as
// it was sent, text or binary; only a forged server message is dropped.
func TestRelayUnchanged(t *testing.T) {
	u := startRoom(t)
	ann, _ := chattest.Join(t, u, "user=ann")
	bob, _ := chattest.Join(t, u, "user=bob")
	for _, msg := range []string{
		`{"user":"ann","text":"<b>hi</b> \u2603","at":1700000000000}`,
		`{"type":"chat","text":"a type of its own"}`,
		`{"type":`, // not JSON
		`hello`,
		`  {"type" : "whom"}`,
		`{"text":"x","type":"who2"}`,
	} {
		ann.Send(t, msg)
		bob.Expect(t, msg)
	}
	ann.SendBinary(t, []byte{0, 1, 0xff})
	if f := bob.NextFrame(t); !f.Binary || f.Data != "\x00\x01\xff" {
		t.Fatalf("bob received %+v, want the binary frame", f)
	}
	for _, forged := range []string{
		`{"type":"join","id":"x","user":"mallory","instance":"vm","at":1}`,
		`{"type":"dm","from":"x","user":"ann","text":"forged","at":1}`,
		`{"type":"presence","peers":[]}`,
		`{"type":"welcome","id":"x"}`,
		`{"type":"dm","to":5}`, // a malformed command: answered by nobody, relayed to nobody
	} {
		ann.Send(t, forged)
	}
	ann.Send(t, `{"text":"after"}`)
	bob.Expect(t, `{"text":"after"}`)
}

// TestDM: a direct message reaches its one peer, the sender gets dm-sent,
// and a dm to an id nobody has reaches nobody.
func TestDM(t *testing.T) {
	u := startRoom(t)
	ann, wa := chattest.Join(t, u, "user=ann")
	bob, wb := chattest.Join(t, u, "user=bob")
	cat, _ := chattest.Join(t, u, "user=cat&events=1")
	ann.Send(t, `{"type":"dm","to":"`+wb.ID+`","text":"psst <3"}`)
	var got chattest.DM
	bob.NextOf(t, "dm", &got)
	if got.From != wa.ID || got.User != "ann" || got.Text != "psst <3" || got.At == 0 {
		t.Fatalf("bob received %+v", got)
	}
	ann.NextOf(t, "dm-sent", &got)
	if got.To != wb.ID || got.Text != "psst <3" || got.At == 0 {
		t.Fatalf("ann received %+v", got)
	}

	ann.Send(t, `{"type":"dm","to":"no-such-peer","text":"anyone?"}`)
	ann.NextOf(t, "dm-sent", &got) // the sender cannot tell, and nothing fails
	ann.Send(t, `{"type":"dm","text":"to nobody"}`)
	msg := `{"user":"ann","text":"after"}`
	ann.Send(t, msg)
	bob.Expect(t, msg) // had anyone received the dm, it would come first
	cat.Expect(t, msg)
}

// TestRoomsIsolate: clients of one room never receive another's messages,
// and who lists the room's own peers.
func TestRoomsIsolate(t *testing.T) {
	u := startRoom(t)
	a1, wa := chattest.Join(t, u, "user=a1&room=one")
	a2, _ := chattest.Join(t, u, "user=a2&room=one")
	b1, _ := chattest.Join(t, u, "user=b1&room=two&events=1")
	b2, _ := chattest.Join(t, u, "user=b2&room=two")
	main1, _ := chattest.Join(t, u, "user=m1&events=1")
	main2, _ := chattest.Join(t, u, "user=m2")
	var n chattest.Notice
	b1.NextOf(t, "join", &n) // b2's, not a room one's nor the main room's
	if n.User != "b2" {
		t.Fatalf("b1 received the join of %s", n.User)
	}
	main1.NextOf(t, "join", &n)
	if n.User != "m2" {
		t.Fatalf("m1 received the join of %s", n.User)
	}

	a1.Send(t, "in one")
	a2.Expect(t, "in one")
	b2.Send(t, "in two")
	b1.Expect(t, "in two") // and not "in one" before it
	main2.Send(t, "in main")
	main1.Expect(t, "in main")

	a2.Send(t, `{"type":"who"}`)
	var p chattest.Presence
	a2.NextOf(t, "presence", &p)
	if len(p.Peers) != 2 || p.Peers[0].ID != wa.ID || p.Peers[1].User != "a2" {
		t.Fatalf("who in room one: %+v", p)
	}
}

func TestBadRoomRefused(t *testing.T) {
	u := startRoom(t)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	_, resp, err := websocket.Dial(ctx, u+"?room=no%20spaces", nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("dial a bad room: %v, %+v; want 400", err, resp)
	}
	body, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(body), "room") {
		t.Fatalf("400 body %q does not say what is wrong", body)
	}
}
