package tests

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/apigatewaymanagementapi"
	"github.com/aws/aws-sdk-go-v2/service/apigatewaymanagementapi/types"
	"github.com/coder/websocket"

	"github.com/edgesync/edgesync/apigw"
	"github.com/edgesync/edgesync/apigw/emulator"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/internal/testenv"
)

// These tests run the API Gateway front end end to end: real WebSocket
// clients connect to the emulated API Gateway WebSocket API over real
// sockets, the emulator invokes an apigw.Handler in process, and its Gateway
// posts back through the real AWS SDK client, on every Registry.

// peerClosed is what a Close hook saw.
type peerClosed struct {
	id, namespace, user string
	code                int
	reason              string
}

// recordClose makes hooks send what their Close hook sees to the returned
// channel.
func recordClose(hooks *edge.Hooks) <-chan peerClosed {
	closes := make(chan peerClosed, 64)
	hooks.Close = func(p edge.Peer, code int, reason string) {
		closes <- peerClosed{p.ID(), p.Namespace(), p.Attr("user"), code, reason}
	}
	return closes
}

// awaitClose returns the close of the peer id, skipping the others'.
func awaitClose(t *testing.T, closes <-chan peerClosed, id string) peerClosed {
	t.Helper()
	for {
		if c := testenv.Recv(t, closes, wait, "the Close of "+id); c.id == id {
			return c
		}
	}
}

// forgotten fails t unless the Registry has forgotten the connection id: it
// is unknown, and no longer a subscriber of topic in namespace.
func forgotten(t *testing.T, reg edge.Registry, id, namespace, topic string) {
	t.Helper()
	ctx := context.Background()
	if c, err := reg.Get(ctx, id); !errors.Is(err, edge.ErrNotFound) {
		t.Fatalf("Registry.Get(%s) = %+v, %v; want edge.ErrNotFound", id, c, err)
	}
	unsubscribed(t, reg, id, namespace, topic)
}

// goneForgotten checks that a connection API Gateway answered 410 for is
// no subscriber of namespace and topic any more, and that its record, kept
// for the $disconnect that follows, expires within a minute.
func goneForgotten(t *testing.T, reg edge.Registry, id, namespace, topic string) {
	t.Helper()
	if c, err := reg.Get(context.Background(), id); err == nil && time.Until(c.ExpiresAt) > time.Minute {
		t.Fatalf("Registry.Get(%s) = %+v: it does not expire within a minute", id, c)
	} else if err != nil && !errors.Is(err, edge.ErrNotFound) {
		t.Fatal(err)
	}
	unsubscribed(t, reg, id, namespace, topic)
}

// unsubscribed checks that id is no subscriber of namespace and topic.
func unsubscribed(t *testing.T, reg edge.Registry, id, namespace, topic string) {
	t.Helper()
	ctx := context.Background()
	var ids []string
	if err := reg.Subscribers(ctx, namespace, topic, func(id string) bool { ids = append(ids, id); return true }); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(ids, id) {
		t.Fatalf("%s is still a subscriber of %s %s: %v", id, namespace, topic, ids)
	}
}

// newConnectionID returns a connection id in API Gateway's form that the
// emulator never gave out.
func newConnectionID() string {
	var b [11]byte
	_, _ = rand.Read(b[:])
	return base64.StdEncoding.EncodeToString(b[:])
}

func TestAPIGatewayConnect(t *testing.T) {
	onEveryBackend(t, func(t *testing.T, b apiBackend) {
		hooks := edge.Hooks{
			Upgrade: func(r *http.Request) (edge.Accept, error) {
				switch r.URL.Query().Get("as") {
				case "stranger":
					return edge.Accept{}, &edge.Reject{
						Status: http.StatusUnauthorized,
						Body:   "who are you?",
						Header: http.Header{"Www-Authenticate": {`Bearer realm="chat"`}},
					}
				case "banned":
					return edge.Accept{}, errors.New("banned")
				}
				return edge.Accept{
					Namespace: "/lobby",
					Attrs:     map[string]string{"agent": r.UserAgent()},
					Header:    http.Header{"Sec-Websocket-Protocol": {"chat.v2"}},
				}, nil
			},
		}
		a := startAPIGateway(t, b, hooks, nil)
		ctx := context.Background()

		// Refused with the Reject's own response.
		refused := func(query string, status int, body string) *http.Response {
			t.Helper()
			c, resp, err := websocket.Dial(ctx, a.url+query, nil)
			if err == nil {
				c.CloseNow()
				t.Fatalf("%s: connected, want %d", query, status)
			}
			if resp == nil {
				t.Fatalf("%s: no HTTP response: %v", query, err)
			}
			got, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != status || string(got) != body {
				t.Fatalf("%s: refused with %d %q, want %d %q", query, resp.StatusCode, got, status, body)
			}
			return resp
		}
		resp := refused("?as=stranger", http.StatusUnauthorized, "who are you?")
		if got := resp.Header.Get("WWW-Authenticate"); got != `Bearer realm="chat"` {
			t.Fatalf("WWW-Authenticate %q", got)
		}
		refused("?as=banned", http.StatusForbidden, "Forbidden")
		if ids := a.emu.Connections(); len(ids) != 0 {
			t.Fatalf("refused clients are connections: %v", ids)
		}

		// Accepted, with the subprotocol Upgrade chose among the client's.
		c := a.dial(t, "", &websocket.DialOptions{
			Subprotocols: []string{"chat.v1", "chat.v2"},
			HTTPHeader:   http.Header{"User-Agent": {"edgesync-test/1"}},
		})
		if got := c.conn.Subprotocol(); got != "chat.v2" {
			t.Fatalf("subprotocol %q, want chat.v2", got)
		}
		if ids := a.emu.Connections(); !slices.Equal(ids, []string{c.id}) {
			t.Fatalf("connections %v, want [%s]", ids, c.id)
		}
		conn, err := a.reg.Get(ctx, c.id)
		if err != nil {
			t.Fatal(err)
		}
		if conn.Namespace != "/lobby" || conn.Attrs["agent"] != "edgesync-test/1" || conn.ConnectedAt.IsZero() {
			t.Fatalf("Registry has %+v", conn)
		}
		info, err := a.management().GetConnection(ctx, &apigatewaymanagementapi.GetConnectionInput{ConnectionId: aws.String(c.id)})
		if err != nil {
			t.Fatal(err)
		}
		if got := aws.ToString(info.Identity.UserAgent); got != "edgesync-test/1" {
			t.Fatalf("API Gateway knows the user agent %q", got)
		}
	})
}

func TestAPIGatewayPublish(t *testing.T) {
	onEveryBackend(t, func(t *testing.T, b apiBackend) {
		a := startAPIGateway(t, b, roomHooks(), nil)
		ann, bob, cat := a.dial(t, "?room=x", nil), a.dial(t, "?room=x", nil), a.dial(t, "?room=x", nil)
		dan, eve := a.dial(t, "?room=y", nil), a.dial(t, "?room=y", nil)
		if topics, err := a.reg.Topics(context.Background(), ann.id); err != nil || !slices.Equal(topics, []string{"chat"}) {
			t.Fatalf("Open subscribed %v, %v; want [chat]", topics, err)
		}

		ann.send(t, websocket.MessageText, "hi from x")
		bob.expect(t, "hi from x")
		cat.expect(t, "hi from x")
		dan.send(t, websocket.MessageText, "hi from y")
		eve.expect(t, "hi from y")

		// Once both invocations have returned, everything they posted has
		// arrived: a marker to every namespace must be the next message of
		// every client. Anything before it is an echo to the sender, a
		// duplicate, or a leak across namespaces.
		a.awaitHandled(t, "MESSAGE", ann.id, 1)
		a.awaitHandled(t, "MESSAGE", dan.id, 1)
		a.publish(t, "", "chat", edge.Text("marker"))
		for _, c := range []*apiClient{ann, bob, cat, dan, eve} {
			c.expect(t, "marker")
		}

		// A burst from every client of x, whose invocations run at once:
		// every other client of x receives each message exactly once, in
		// whatever order.
		room := []*apiClient{ann, bob, cat}
		const n = 10
		for i := range n {
			for _, c := range room {
				c.send(t, websocket.MessageText, fmt.Sprintf("%s %d", c.id, i))
			}
		}
		for _, c := range room {
			want := make(map[string]bool)
			for _, from := range room {
				for i := range n {
					want[fmt.Sprintf("%s %d", from.id, i)] = from != c
				}
			}
			for left := 2 * n; left > 0; left-- {
				f := c.next(t)
				if !want[f.data] {
					t.Fatalf("client %s received %v %q: its own, a duplicate or a stranger", c.id, f.typ, f.data)
				}
				want[f.data] = false
			}
		}
		a.awaitHandled(t, "MESSAGE", ann.id, n+1)
		a.awaitHandled(t, "MESSAGE", bob.id, n)
		a.awaitHandled(t, "MESSAGE", cat.id, n)
		a.publish(t, "", "chat", edge.Text("end"))
		for _, c := range []*apiClient{ann, bob, cat, dan, eve} {
			c.expect(t, "end")
		}
		if errs := a.errs.Errors(testenv.AnyStage); len(errs) > 0 {
			t.Fatalf("errors reported: %v", errs)
		}
	})
}

// TestAPIGatewayPublishDuringConnect publishes to a topic while a peer
// subscribed to it is still in its $connect, which API Gateway answers 410
// Gone: the peer has its subscriptions once connected all the same.
func TestAPIGatewayPublishDuringConnect(t *testing.T) {
	onEveryBackend(t, func(t *testing.T, b apiBackend) {
		subscribed, release := make(chan struct{}), make(chan struct{})
		hooks := roomHooks()
		open := hooks.Open
		hooks.Open = func(p edge.Peer) {
			open(p)
			if p.Attr("user") == "slow" {
				close(subscribed)
				<-release
			}
		}
		a := startAPIGateway(t, b, hooks, nil)
		free := sync.OnceFunc(func() { close(release) })
		t.Cleanup(free) // before the emulator waits for the $connect
		ann := a.dial(t, "?room=r", nil)

		type dialed struct {
			conn *websocket.Conn
			err  error
		}
		done := make(chan dialed, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), wait)
			defer cancel()
			conn, _, err := websocket.Dial(ctx, a.url+"?room=r&user=slow", nil)
			done <- dialed{conn, err}
		}()
		testenv.Recv(t, subscribed, wait, "the slow peer's subscription")
		ann.send(t, websocket.MessageText, "during the connect")
		a.awaitHandled(t, "MESSAGE", ann.id, 1)
		free()
		d := testenv.Recv(t, done, wait, "the slow peer's handshake")
		if d.err != nil {
			t.Fatal(d.err)
		}
		slow := a.client(t, d.conn)

		if _, err := a.reg.Get(context.Background(), slow.id); err != nil {
			t.Fatalf("the Registry lost the peer that was connecting: %v", err)
		}
		a.publish(t, "/r", "chat", edge.Text("after the connect"))
		slow.expect(t, "after the connect")
		ann.expect(t, "after the connect")
	})
}

func TestAPIGatewayGoneConnection(t *testing.T) {
	onEveryBackend(t, func(t *testing.T, b apiBackend) {
		a := startAPIGateway(t, b, roomHooks(), nil)
		ann, bob := a.dial(t, "?room=r", nil), a.dial(t, "?room=r", nil)

		// A connection that closed without its $disconnect reaching the
		// function: the Registry still holds it, API Gateway does not.
		ctx := context.Background()
		stale := newConnectionID()
		if err := a.reg.Add(ctx, edge.Conn{ID: stale, Namespace: "/r", ConnectedAt: time.Now().Add(-time.Hour)}); err != nil {
			t.Fatal(err)
		}
		if err := a.reg.Subscribe(ctx, stale, "chat"); err != nil {
			t.Fatal(err)
		}
		var gone *types.GoneException
		if _, err := a.management().GetConnection(ctx, &apigatewaymanagementapi.GetConnectionInput{ConnectionId: aws.String(stale)}); !errors.As(err, &gone) {
			t.Fatalf("GetConnection of the stale connection: %v, want GoneException", err)
		}

		ann.send(t, websocket.MessageText, "anyone?")
		bob.expect(t, "anyone?")
		if id := testenv.Recv(t, a.gone, wait, "OnGone"); id != stale {
			t.Fatalf("OnGone(%s), want the stale %s", id, stale)
		}
		a.awaitHandled(t, "MESSAGE", ann.id, 1)
		goneForgotten(t, a.reg, stale, "/r", "chat")
		if errs := a.errs.Errors(testenv.AnyStage); len(errs) > 0 {
			t.Fatalf("a gone connection was reported: %v", errs)
		}

		bob.send(t, websocket.MessageText, "still here")
		ann.expect(t, "still here")

		// The other way round: a connection the Registry forgot (expired)
		// cannot be rebuilt, so its next message closes it.
		if err := a.reg.Remove(ctx, bob.id); err != nil {
			t.Fatal(err)
		}
		bob.send(t, websocket.MessageText, "hello?")
		if code := bob.closed(t); code != websocket.StatusNormalClosure {
			t.Fatalf("forgotten client closed with %v, want 1000", code)
		}
		a.awaitHandled(t, "DISCONNECT", bob.id, 1)
		if ids := a.emu.Connections(); !slices.Equal(ids, []string{ann.id}) {
			t.Fatalf("connections %v, want [%s]", ids, ann.id)
		}
	})
}

func TestAPIGatewayPayloadLimits(t *testing.T) {
	onEveryBackend(t, func(t *testing.T, b apiBackend) {
		hooks := roomHooks()
		closes := recordClose(&hooks)
		a := startAPIGateway(t, b, hooks, nil)
		ann, bob := a.dial(t, "?room=r", nil), a.dial(t, "?room=r", nil)

		// A message of exactly the limit goes through: in, then posted.
		largest := strings.Repeat("a", emulator.MaxMessageSize)
		ann.sendFragmented(t, []byte(largest))
		bob.expect(t, largest)

		// One byte more and the emulator closes the client with 1009;
		// nothing of the message reaches the others (see "after" below).
		ann.sendFragmented(t, []byte(largest+"a"))
		if code := ann.closed(t); code != websocket.StatusMessageTooBig {
			t.Fatalf("closed with %v, want 1009", code)
		}
		if c := awaitClose(t, closes, ann.id); c.code != int(websocket.StatusMessageTooBig) {
			t.Fatalf("Close hook saw %d %q, want 1009", c.code, c.reason)
		}
		a.awaitHandled(t, "DISCONNECT", ann.id, 1)
		forgotten(t, a.reg, ann.id, "/r", "chat")

		// Server-side publishes over API Gateway's limit, once encoded,
		// are refused before any post.
		for _, d := range []edge.Data{
			edge.Text(largest + "a"),
			edge.Binary(make([]byte, apigw.MaxPayload/4*3+1)), // base64 over the limit
		} {
			a.publish(t, "/r", "chat", d)
		}
		if n := a.errs.CountIs(edge.StagePublish, apigw.ErrPayloadTooLarge); n != 2 {
			t.Fatalf("%d ErrPayloadTooLarge reported, want 2: %v", n, a.errs)
		}
		a.publish(t, "/r", "chat", edge.Text("after"))
		bob.expect(t, "after")
	})
}

func TestAPIGatewayBinary(t *testing.T) {
	onEveryBackend(t, func(t *testing.T, b apiBackend) {
		hooks := roomHooks()
		closes := recordClose(&hooks)
		a := startAPIGateway(t, b, hooks, nil)
		ann, bob := a.dial(t, "?room=r", nil), a.dial(t, "?room=r", nil)

		// Published server-side, binary arrives as the text of its base64.
		bin := []byte{0, 1, 0xfe, 0xff, 'h', 'i'}
		a.publish(t, "/r", "chat", edge.Binary(bin))
		for _, c := range []*apiClient{ann, bob} {
			c.expect(t, base64.StdEncoding.EncodeToString(bin))
		}

		// A client's binary frame closes it with 1003.
		ann.send(t, websocket.MessageBinary, string(bin))
		if code := ann.closed(t); code != websocket.StatusUnsupportedData {
			t.Fatalf("closed with %v, want 1003", code)
		}
		if c := awaitClose(t, closes, ann.id); c.code != int(websocket.StatusUnsupportedData) {
			t.Fatalf("Close hook saw %d %q, want 1003", c.code, c.reason)
		}
		a.publish(t, "/r", "chat", edge.Text("after"))
		bob.expect(t, "after")
	})
}

func TestAPIGatewayThrottled(t *testing.T) {
	onEveryBackend(t, func(t *testing.T, b apiBackend) {
		a := startAPIGateway(t, b, roomHooks(), nil)
		ann, bob := a.dial(t, "?room=r", nil), a.dial(t, "?room=r", nil)

		// Throttled as often as the Gateway retries: the post goes
		// through.
		a.emu.Throttle(apigw.DefaultMaxRetries)
		ann.send(t, websocket.MessageText, "patience")
		bob.expect(t, "patience")
		a.awaitHandled(t, "MESSAGE", ann.id, 1)
		if errs := a.errs.Errors(testenv.AnyStage); len(errs) > 0 {
			t.Fatalf("errors reported: %v", errs)
		}

		// Once more than that, it is given up and reported.
		a.emu.Throttle(apigw.DefaultMaxRetries + 1)
		ann.send(t, websocket.MessageText, "lost")
		a.awaitHandled(t, "MESSAGE", ann.id, 2)
		errs := a.errs.Errors(edge.StagePublish)
		var limit *types.LimitExceededException
		if len(errs) != 1 || !errors.As(errs[0], &limit) {
			t.Fatalf("reported %v, want one LimitExceededException", errs)
		}
		a.publish(t, "/r", "chat", edge.Text("after"))
		bob.expect(t, "after")
	})
}

func TestAPIGatewaySend(t *testing.T) {
	onEveryBackend(t, func(t *testing.T, b apiBackend) {
		openSend := make(chan error, 64)
		hooks := edge.Hooks{
			Open: func(p edge.Peer) { openSend <- p.Send(context.Background(), edge.Text("too early")) },
			Message: func(p edge.Peer, d edge.Data) {
				if err := p.Send(context.Background(), edge.Text("echo "+string(d.Bytes))); err != nil {
					t.Errorf("Send from Message: %v", err)
				}
			},
		}
		a := startAPIGateway(t, b, hooks, nil)
		ann := a.dial(t, "", nil)
		if err := testenv.Recv(t, openSend, wait, "Send from Open"); !errors.Is(err, apigw.ErrNotConnected) {
			t.Fatalf("Send from Open: %v, want apigw.ErrNotConnected", err)
		}
		bob := a.dial(t, "", nil)
		testenv.Recv(t, openSend, wait, "Send from Open")

		// The reply reaches the sender, and only the sender.
		ann.send(t, websocket.MessageText, "one")
		ann.expect(t, "echo one")
		a.awaitHandled(t, "MESSAGE", ann.id, 1)
		bob.send(t, websocket.MessageText, "two")
		bob.expect(t, "echo two")
	})
}

func TestAPIGatewayDisconnect(t *testing.T) {
	onEveryBackend(t, func(t *testing.T, b apiBackend) {
		hooks := roomHooks()
		closes := recordClose(&hooks)
		message := hooks.Message
		hooks.Message = func(p edge.Peer, d edge.Data) {
			if string(d.Bytes) == "kick me" {
				_ = p.Close(4000, "kicked")
				return
			}
			message(p, d)
		}
		a := startAPIGateway(t, b, hooks, nil)
		ctx := context.Background()

		// The client closes.
		ann := a.dial(t, "?room=r&user=ann", nil)
		if err := ann.conn.Close(websocket.StatusNormalClosure, "bye"); err != nil {
			t.Fatal(err)
		}
		want := peerClosed{id: ann.id, namespace: "/r", user: "ann", code: 1000, reason: "bye"}
		if got := awaitClose(t, closes, ann.id); got != want {
			t.Fatalf("Close hook saw %+v, want %+v", got, want)
		}
		a.awaitHandled(t, "DISCONNECT", ann.id, 1)
		forgotten(t, a.reg, ann.id, "/r", "chat")
		var gone *types.GoneException
		_, err := a.management().PostToConnection(ctx, &apigatewaymanagementapi.PostToConnectionInput{ConnectionId: aws.String(ann.id), Data: []byte("hello?")})
		if !errors.As(err, &gone) {
			t.Fatalf("post after the close: %v, want GoneException", err)
		}

		// The client drops without a close frame: 1006.
		cat := a.dial(t, "?room=r&user=cat", nil)
		cat.conn.CloseNow()
		want = peerClosed{id: cat.id, namespace: "/r", user: "cat", code: 1006}
		if got := awaitClose(t, closes, cat.id); got != want {
			t.Fatalf("Close hook saw %+v, want %+v", got, want)
		}
		a.awaitHandled(t, "DISCONNECT", cat.id, 1)
		forgotten(t, a.reg, cat.id, "/r", "chat")

		// The function closes the client: API Gateway deletes the
		// connection, and its $disconnect runs the Close hook.
		bob := a.dial(t, "?room=r&user=bob", nil)
		bob.send(t, websocket.MessageText, "kick me")
		if code := bob.closed(t); code != websocket.StatusNormalClosure {
			t.Fatalf("kicked client closed with %v, want 1000", code)
		}
		if got := awaitClose(t, closes, bob.id); got.user != "bob" || got.namespace != "/r" {
			t.Fatalf("Close hook saw %+v", got)
		}
		a.awaitHandled(t, "DISCONNECT", bob.id, 1)
		forgotten(t, a.reg, bob.id, "/r", "chat")
	})
}

func TestAPIGatewayAttributes(t *testing.T) {
	onEveryBackend(t, func(t *testing.T, b apiBackend) {
		hooks := roomHooks()
		hooks.Message = func(p edge.Peer, d edge.Data) {
			_ = p.Send(context.Background(), edge.Text(p.Attr("user")+" in "+p.Namespace()+": "+string(d.Bytes)))
		}
		a := startAPIGateway(t, b, hooks, nil)
		ann := a.dial(t, "?room=r&user=ann", nil)
		bob := a.dial(t, "?room=r&user=bob", nil)

		// Every message is an invocation of its own, which rebuilds the
		// peer from the Registry.
		for _, text := range []string{"first", "second"} {
			ann.send(t, websocket.MessageText, text)
			bob.send(t, websocket.MessageText, text)
			ann.expect(t, "ann in /r: "+text)
			bob.expect(t, "bob in /r: "+text)
		}
	})
}

// TestAPIGatewayToLongLived runs a function and a long-lived server on one
// backplane: what a gateway client sends reaches the other gateway clients
// through the Gateway, and the long-lived server's clients through the
// backplane.
func TestAPIGatewayToLongLived(t *testing.T) {
	onEveryBackend(t, func(t *testing.T, b apiBackend) {
		a := startAPIGateway(t, b, roomHooks(), nil)
		server, serverErrs := watched(t, b.sync(t))
		long := dial(t, server.url("/r"))
		ann, bob := a.dial(t, "?room=r", nil), a.dial(t, "?room=r", nil)

		ann.send(t, websocket.MessageText, "to everyone")
		bob.expect(t, "to everyone")
		if f := long.next(t); f.typ != websocket.MessageText || f.data != "to everyone" {
			t.Fatalf("long-lived client received %v %q", f.typ, f.data)
		}
		// The backplane keeps one instance's order: a duplicate of the
		// first message would come before the second.
		a.awaitHandled(t, "MESSAGE", ann.id, 1)
		bob.send(t, websocket.MessageText, "second")
		if f := long.next(t); f.data != "second" {
			t.Fatalf("long-lived client received %q, want the second message", f.data)
		}
		if errs := serverErrs.Errors(testenv.AnyStage); len(errs) > 0 {
			t.Fatalf("long-lived server reported %v", errs)
		}
		if errs := a.errs.Errors(testenv.AnyStage); len(errs) > 0 {
			t.Fatalf("function reported %v", errs)
		}
	})
}
