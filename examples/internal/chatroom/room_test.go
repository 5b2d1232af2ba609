package chatroom_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
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
	hub, err := edge.New(edge.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ws := longlived.New(hub, chatroom.Hooks(hub, "vm test"))
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
	return "ws" + strings.TrimPrefix(srv.URL, "http") + "/"
}

// client is a WebSocket client of the room with one reader.
type client struct {
	conn *websocket.Conn
	in   chan frame
	name string
}

type frame struct {
	binary bool
	data   string
}

// join connects to the room at wsURL with query and says hello: it returns
// once the server has run its Open hook, with the client's welcome.
func join(t *testing.T, wsURL, query string) (*client, welcome) {
	t.Helper()
	c := dial(t, wsURL, query)
	c.send(t, `{"type":"hello"}`)
	var w welcome
	c.nextJSON(t, "welcome", &w)
	return c, w
}

func dial(t *testing.T, wsURL, query string) *client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, wsURL+"?"+query, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", query, err)
	}
	c := &client{conn: conn, in: make(chan frame, 64), name: query}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			typ, b, err := conn.Read(context.Background())
			if err != nil {
				return
			}
			c.in <- frame{typ == websocket.MessageBinary, string(b)}
		}
	}()
	t.Cleanup(func() {
		conn.CloseNow()
		<-done
	})
	return c
}

func (c *client) send(t *testing.T, msg string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := c.conn.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		t.Fatal(err)
	}
}

// next returns the next text message the client receives.
func (c *client) next(t *testing.T) string {
	t.Helper()
	f := testenv.Recv(t, c.in, wait, "a message for "+c.name)
	if f.binary {
		t.Fatalf("%s received binary %q, want text", c.name, f.data)
	}
	return f.data
}

// expect checks that the next message is want.
func (c *client) expect(t *testing.T, want string) {
	t.Helper()
	if got := c.next(t); got != want {
		t.Fatalf("%s received %s, want %s", c.name, got, want)
	}
}

// nextJSON decodes the next message into v, which must have type typ.
func (c *client) nextJSON(t *testing.T, typ string, v any) {
	t.Helper()
	got := c.next(t)
	var head struct{ Type string }
	if err := json.Unmarshal([]byte(got), &head); err != nil || head.Type != typ {
		t.Fatalf("%s received %s, want a message of type %q", c.name, got, typ)
	}
	if err := json.Unmarshal([]byte(got), v); err != nil {
		t.Fatalf("%s: %s: %v", c.name, got, err)
	}
}

type welcome struct{ ID, User, Instance string }

type notice struct {
	Type, ID, User, Instance string
	At                       int64
}

type presence struct {
	Peers []struct{ ID, User, Instance string }
}

type dm struct {
	From, To, User, Text string
	At                   int64
}

// TestHelloAndWho: a client learns its id with hello, and who lists every
// peer of the room, the asker included, sorted by user.
func TestHelloAndWho(t *testing.T) {
	u := startRoom(t)
	bob, wb := join(t, u, "user=bob")
	ann, wa := join(t, u, "user=ann")
	if wa.User != "ann" || wa.Instance != "vm test" || wa.ID == "" || wb.User != "bob" || wa.ID == wb.ID {
		t.Fatalf("welcomes %+v, %+v", wa, wb)
	}
	for _, c := range []*client{ann, bob} {
		c.send(t, `{"type":"who"}`)
		var p presence
		c.nextJSON(t, "presence", &p)
		if len(p.Peers) != 2 || p.Peers[0].ID != wa.ID || p.Peers[0].User != "ann" || p.Peers[0].Instance != "vm test" ||
			p.Peers[1].ID != wb.ID || p.Peers[1].User != "bob" {
			t.Fatalf("%s: presence %+v", c.name, p)
		}
	}
	_, wc := join(t, u, "user="+url.QueryEscape(" \x07"))
	if wc.User != "anonymous" {
		t.Fatalf("a blank user is %q, want anonymous", wc.User)
	}
}

// TestEventsOnlyWithEvents: join and leave notices reach the clients that
// asked for them, never the peer itself, and never a plain client, which
// receives the relay alone.
func TestEventsOnlyWithEvents(t *testing.T) {
	u := startRoom(t)
	ev, _ := join(t, u, "user=ev&events=1") // its own join, had it one, would come before its welcome
	plain, _ := join(t, u, "user=plain")
	var n notice
	ev.nextJSON(t, "join", &n)
	if n.User != "plain" {
		t.Fatalf("join %+v, want plain's", n)
	}
	cat, wc := join(t, u, "user=cat")
	ev.nextJSON(t, "join", &n)
	if n.ID != wc.ID || n.User != "cat" || n.Instance != "vm test" || n.At == 0 {
		t.Fatalf("join %+v, want cat's (%s)", n, wc.ID)
	}
	msg := `{"user":"cat","text":"hi","at":1}`
	cat.send(t, msg)
	plain.expect(t, msg) // had it received the joins, they would come first
	ev.expect(t, msg)

	cat.conn.Close(websocket.StatusNormalClosure, "")
	ev.nextJSON(t, "leave", &n)
	if n.ID != wc.ID || n.User != "cat" {
		t.Fatalf("leave %+v, want cat's", n)
	}
	msg = `{"user":"ev","text":"bye cat","at":2}`
	ev.send(t, msg)
	plain.expect(t, msg) // and not the leave before it
}

// TestRelayUnchanged: what is not a command reaches every other client as
// it was sent, text or binary; only a forged server message is dropped.
func TestRelayUnchanged(t *testing.T) {
	u := startRoom(t)
	ann, _ := join(t, u, "user=ann")
	bob, _ := join(t, u, "user=bob")
	for _, msg := range []string{
		`{"user":"ann","text":"<b>hi</b> \u2603","at":1700000000000}`,
		`{"type":"chat","text":"a type of its own"}`,
		`{"type":`, // not JSON
		`hello`,
		`  {"type" : "whom"}`,
		`{"text":"x","type":"who2"}`,
	} {
		ann.send(t, msg)
		bob.expect(t, msg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := ann.conn.Write(ctx, websocket.MessageBinary, []byte{0, 1, 0xff}); err != nil {
		t.Fatal(err)
	}
	if f := testenv.Recv(t, bob.in, wait, "binary"); !f.binary || f.data != "\x00\x01\xff" {
		t.Fatalf("bob received %+v, want the binary frame", f)
	}
	for _, forged := range []string{
		`{"type":"join","id":"x","user":"mallory","instance":"vm","at":1}`,
		`{"type":"dm","from":"x","user":"ann","text":"forged","at":1}`,
		`{"type":"presence","peers":[]}`,
		`{"type":"welcome","id":"x"}`,
		`{"type":"dm","to":5}`, // a malformed command: answered by nobody, relayed to nobody
	} {
		ann.send(t, forged)
	}
	ann.send(t, `{"text":"after"}`)
	bob.expect(t, `{"text":"after"}`)
}

// TestDM: a direct message reaches its one peer, the sender gets dm-sent,
// and a dm to an id nobody has reaches nobody.
func TestDM(t *testing.T) {
	u := startRoom(t)
	ann, wa := join(t, u, "user=ann")
	bob, wb := join(t, u, "user=bob")
	cat, _ := join(t, u, "user=cat&events=1")
	ann.send(t, `{"type":"dm","to":"`+wb.ID+`","text":"psst <3"}`)
	var got dm
	bob.nextJSON(t, "dm", &got)
	if got.From != wa.ID || got.User != "ann" || got.Text != "psst <3" || got.At == 0 {
		t.Fatalf("bob received %+v", got)
	}
	ann.nextJSON(t, "dm-sent", &got)
	if got.To != wb.ID || got.Text != "psst <3" || got.At == 0 {
		t.Fatalf("ann received %+v", got)
	}

	ann.send(t, `{"type":"dm","to":"no-such-peer","text":"anyone?"}`)
	ann.nextJSON(t, "dm-sent", &got) // the sender cannot tell, and nothing fails
	ann.send(t, `{"type":"dm","text":"to nobody"}`)
	msg := `{"user":"ann","text":"after"}`
	ann.send(t, msg)
	bob.expect(t, msg) // had anyone received the dm, it would come first
	cat.expect(t, msg)
}

// TestRoomsIsolate: clients of one room never receive another's messages,
// and who lists the room's own peers.
func TestRoomsIsolate(t *testing.T) {
	u := startRoom(t)
	a1, wa := join(t, u, "user=a1&room=one")
	a2, _ := join(t, u, "user=a2&room=one")
	b1, _ := join(t, u, "user=b1&room=two&events=1")
	b2, _ := join(t, u, "user=b2&room=two")
	main1, _ := join(t, u, "user=m1&events=1")
	main2, _ := join(t, u, "user=m2")
	var n notice
	b1.nextJSON(t, "join", &n) // b2's, not a room one's nor the main room's
	if n.User != "b2" {
		t.Fatalf("b1 received the join of %s", n.User)
	}
	main1.nextJSON(t, "join", &n)
	if n.User != "m2" {
		t.Fatalf("m1 received the join of %s", n.User)
	}

	a1.send(t, "in one")
	a2.expect(t, "in one")
	b2.send(t, "in two")
	b1.expect(t, "in two") // and not "in one" before it
	main2.send(t, "in main")
	main1.expect(t, "in main")

	a2.send(t, `{"type":"who"}`)
	var p presence
	a2.nextJSON(t, "presence", &p)
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
