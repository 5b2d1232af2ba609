package longlived_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/internal/testenv"
	"github.com/edgesync/edgesync/longlived"
)

// wait bounds every wait in these tests; nothing sleeps.
const wait = 10 * time.Second

type closeEvent struct {
	peer   edge.Peer
	code   int
	reason string
}

type errorEvent struct {
	peer edge.Peer
	err  error
}

// server is a Handler under test, behind a real HTTP server, with the hook
// calls it made.
type server struct {
	hub     *edge.Hub
	handler *longlived.Handler
	http    *httptest.Server

	opened chan edge.Peer
	closed chan closeEvent
	errs   chan errorEvent

	mu     sync.Mutex
	opens  map[string]int
	closes map[string]int
}

// start serves hooks with a Handler that configure may adjust. Open, Close
// and Error calls are recorded; an Open is announced on s.opened once the
// test's own Open has run. Pings are off unless configure turns them on.
func start(t *testing.T, hooks edge.Hooks, configure func(*longlived.Handler)) *server {
	t.Helper()
	return startOn(t, hooks, configure, nil)
}

// startOn is start with the server's listener wrapped by wrap, unless it
// is nil.
func startOn(t *testing.T, hooks edge.Hooks, configure func(*longlived.Handler), wrap func(net.Listener) net.Listener) *server {
	t.Helper()
	hub, err := edge.New(edge.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hub.Close() })
	s := &server{
		hub:    hub,
		opened: make(chan edge.Peer, 64),
		closed: make(chan closeEvent, 64),
		errs:   make(chan errorEvent, 64),
		opens:  make(map[string]int),
		closes: make(map[string]int),
	}
	open, closeHook, errHook := hooks.Open, hooks.Close, hooks.Error
	hooks.Open = func(p edge.Peer) {
		s.mu.Lock()
		s.opens[p.ID()]++
		s.mu.Unlock()
		defer func() { s.opened <- p }() // once the test's Open has run, even if it panics
		if open != nil {
			open(p)
		}
	}
	hooks.Close = func(p edge.Peer, code int, reason string) {
		s.mu.Lock()
		s.closes[p.ID()]++
		s.mu.Unlock()
		s.closed <- closeEvent{p, code, reason}
		if closeHook != nil {
			closeHook(p, code, reason)
		}
	}
	hooks.Error = func(p edge.Peer, err error) {
		s.errs <- errorEvent{p, err}
		if errHook != nil {
			errHook(p, err)
		}
	}
	s.handler = longlived.New(hub, hooks)
	s.handler.PingInterval = 0
	if configure != nil {
		configure(s.handler)
	}
	s.http = httptest.NewUnstartedServer(s.handler)
	if wrap != nil {
		s.http.Listener = wrap(s.http.Listener)
	}
	s.http.Start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		if err := s.handler.Close(ctx); err != nil {
			t.Errorf("Handler.Close: %v", err)
		}
		s.http.Close()
		s.mu.Lock()
		defer s.mu.Unlock()
		for id, n := range s.opens {
			if s.closes[id] != 1 {
				t.Errorf("peer %s: Hooks.Close called %d times, want 1", id, s.closes[id])
			}
			if n != 1 {
				t.Errorf("peer %s: Hooks.Open called %d times, want 1", id, n)
			}
		}
		if s.handler.PingInterval == 0 {
			noPeerGoroutines(t)
		}
	})
	return s
}

// noPeerGoroutines fails t if a goroutine of a peer outlives its connection.
// The connections have ended: a goroutine still listed can only be on its
// way out, so the check yields until it is gone.
func noPeerGoroutines(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(wait)
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if !bytes.Contains(buf[:n], []byte("longlived.(*peer)")) {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("peer goroutines left behind:\n%s", buf[:n])
			return
		}
		runtime.Gosched()
	}
}

func (s *server) url(path string) string {
	return "ws" + strings.TrimPrefix(s.http.URL, "http") + path
}

// dial connects a client to path and waits until the server has opened it.
func (s *server) dial(t *testing.T, path string) (*websocket.Conn, edge.Peer) {
	t.Helper()
	c := dialOpts(t, s.url(path), nil)
	return c, recv(t, s.opened, "Hooks.Open")
}

func dialOpts(t *testing.T, url string, opts *websocket.DialOptions) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	c, _, err := websocket.Dial(ctx, url, opts)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	c.SetReadLimit(4 << 20)
	t.Cleanup(func() { c.CloseNow() })
	return c
}

func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	return testenv.Recv(t, ch, wait, what)
}

func send(t *testing.T, c *websocket.Conn, typ websocket.MessageType, data string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := c.Write(ctx, typ, []byte(data)); err != nil {
		t.Fatalf("write: %v", err)
	}
}

func read(t *testing.T, c *websocket.Conn) (websocket.MessageType, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	typ, b, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return typ, string(b)
}

func expectText(t *testing.T, c *websocket.Conn, want string) {
	t.Helper()
	if typ, got := read(t, c); typ != websocket.MessageText || got != want {
		t.Fatalf("read %v %q, want text %q", typ, got, want)
	}
}

// expectClose reads until the connection ends and checks its close status.
func expectClose(t *testing.T, c *websocket.Conn, code websocket.StatusCode) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	for {
		_, _, err := c.Read(ctx)
		if err == nil {
			continue
		}
		if got := websocket.CloseStatus(err); got != code {
			t.Fatalf("connection ended with %v (%v), want status %d", got, err, code)
		}
		return
	}
}

func (s *server) expectClosed(t *testing.T, p edge.Peer, code int) closeEvent {
	t.Helper()
	ev := recv(t, s.closed, "Hooks.Close")
	if ev.peer.ID() != p.ID() || ev.code != code {
		t.Fatalf("Hooks.Close(%s, %d, %q), want peer %s with %d", ev.peer.ID(), ev.code, ev.reason, p.ID(), code)
	}
	return ev
}

// echo sends every message back to its sender.
func echo(p edge.Peer, d edge.Data) {
	if err := p.Send(context.Background(), d); err != nil {
		panic(err)
	}
}

// relay subscribes every peer to topic "t" and publishes what it sends there.
func relay() edge.Hooks {
	return edge.Hooks{
		Open: func(p edge.Peer) {
			if err := p.Subscribe(context.Background(), "t"); err != nil {
				panic(err)
			}
		},
		Message: func(p edge.Peer, d edge.Data) {
			if err := p.Publish(context.Background(), "t", d); err != nil {
				panic(err)
			}
		},
	}
}

func TestTextAndBinaryBothWays(t *testing.T) {
	got := make(chan edge.Data, 2)
	s := start(t, edge.Hooks{Message: func(p edge.Peer, d edge.Data) {
		got <- d
		echo(p, d)
	}}, nil)
	c, _ := s.dial(t, "/")

	send(t, c, websocket.MessageText, "héllo")
	if d := recv(t, got, "text message"); d.Binary || d.String() != "héllo" {
		t.Fatalf("server got %+v, want text héllo", d)
	}
	if typ, data := read(t, c); typ != websocket.MessageText || data != "héllo" {
		t.Fatalf("client got %v %q, want text héllo", typ, data)
	}

	send(t, c, websocket.MessageBinary, "\x00\xff")
	if d := recv(t, got, "binary message"); !d.Binary || d.String() != "\x00\xff" {
		t.Fatalf("server got %+v, want binary 00ff", d)
	}
	if typ, data := read(t, c); typ != websocket.MessageBinary || data != "\x00\xff" {
		t.Fatalf("client got %v %q, want binary 00ff", typ, data)
	}
}

func TestPublishReachesOtherSubscribersOnce(t *testing.T) {
	s := start(t, relay(), nil)
	a, _ := s.dial(t, "/room")
	b, _ := s.dial(t, "/room")
	c, _ := s.dial(t, "/room")

	// Fan-out is synchronous and each peer's queue is ordered, so a message
	// echoed to its sender, or delivered twice, would come before the next.
	send(t, a, websocket.MessageText, "from a")
	expectText(t, b, "from a")
	expectText(t, c, "from a")
	send(t, b, websocket.MessageBinary, "from b")
	for _, conn := range []*websocket.Conn{a, c} {
		if typ, got := read(t, conn); typ != websocket.MessageBinary || got != "from b" {
			t.Fatalf("read %v %q, want binary %q", typ, got, "from b")
		}
	}
	send(t, c, websocket.MessageText, "from c")
	expectText(t, a, "from c")
	expectText(t, b, "from c")

	err := s.hub.Publish(context.Background(), edge.Message{Namespace: "/room", Topic: "t", Data: edge.Text("end")})
	if err != nil {
		t.Fatal(err)
	}
	for _, conn := range []*websocket.Conn{a, b, c} {
		expectText(t, conn, "end")
	}
}

func TestNamespacesIsolate(t *testing.T) {
	s := start(t, relay(), nil)
	x1, _ := s.dial(t, "/x")
	x2, _ := s.dial(t, "/x")
	y, _ := s.dial(t, "/y")

	send(t, x1, websocket.MessageText, "only x")
	expectText(t, x2, "only x")
	ctx := context.Background()
	if err := s.hub.Publish(ctx, edge.Message{Namespace: "/y", Topic: "t", Data: edge.Text("only y")}); err != nil {
		t.Fatal(err)
	}
	expectText(t, y, "only y") // and not "only x" first
	if err := s.hub.Publish(ctx, edge.Message{Topic: "t", Data: edge.Text("everyone")}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*websocket.Conn{x1, x2, y} {
		expectText(t, c, "everyone")
	}
}

func TestUpgradeRefused(t *testing.T) {
	s := start(t, edge.Hooks{Upgrade: func(r *http.Request) (edge.Accept, error) {
		switch r.URL.Query().Get("case") {
		case "reject":
			return edge.Accept{}, &edge.Reject{Status: http.StatusUnauthorized, Body: "token required",
				Header: http.Header{"Www-Authenticate": {"Bearer"}}}
		case "error":
			return edge.Accept{}, errors.New("no")
		case "panic":
			panic("upgrade bug")
		}
		return edge.Accept{}, nil
	}}, nil)

	for _, tc := range []struct {
		query, body, authenticate string
		status                    int
	}{
		{"reject", "token required", "Bearer", http.StatusUnauthorized},
		{"error", "Forbidden", "", http.StatusForbidden},
		{"panic", "Internal Server Error", "", http.StatusInternalServerError},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		_, resp, err := websocket.Dial(ctx, s.url("/?case="+tc.query), nil)
		cancel()
		if err == nil || resp == nil {
			t.Fatalf("%s: dial succeeded (%v), want HTTP %d", tc.query, err, tc.status)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != tc.status || string(body) != tc.body {
			t.Errorf("%s: got %d %q, want %d %q", tc.query, resp.StatusCode, body, tc.status, tc.body)
		}
		if got := resp.Header.Get("WWW-Authenticate"); got != tc.authenticate {
			t.Errorf("%s: WWW-Authenticate %q, want %q", tc.query, got, tc.authenticate)
		}
	}
	select {
	case p := <-s.opened:
		t.Fatalf("refused upgrade opened peer %s", p.ID())
	default:
	}
}

func TestAcceptNamespaceAttrsAndHeader(t *testing.T) {
	s := start(t, edge.Hooks{
		Upgrade: func(r *http.Request) (edge.Accept, error) {
			return edge.Accept{
				Namespace: "room-" + r.URL.Query().Get("room"),
				Attrs:     map[string]string{"user": r.URL.Query().Get("user")},
				Header:    http.Header{"X-Served-By": {"edgesync"}},
			}, nil
		},
	}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, s.url("/_ws?room=7&user=ann"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	if got := resp.Header.Get("X-Served-By"); got != "edgesync" {
		t.Errorf("X-Served-By %q, want edgesync", got)
	}
	p := recv(t, s.opened, "Hooks.Open")
	if p.Namespace() != "room-7" || p.Attr("user") != "ann" || p.Attr("missing") != "" {
		t.Errorf("peer namespace %q, user %q, missing %q; want room-7, ann, empty",
			p.Namespace(), p.Attr("user"), p.Attr("missing"))
	}
}

func TestDefaultNamespaceIsPath(t *testing.T) {
	s := start(t, edge.Hooks{}, nil)
	_, p := s.dial(t, "/_ws")
	if p.Namespace() != "/_ws" {
		t.Errorf("default namespace %q, want the URL path /_ws", p.Namespace())
	}
}

func TestSubprotocol(t *testing.T) {
	s := start(t, edge.Hooks{Upgrade: func(r *http.Request) (edge.Accept, error) {
		return edge.Accept{Header: http.Header{"Sec-WebSocket-Protocol": {"chat.v1"}}}, nil
	}}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, s.url("/"), &websocket.DialOptions{Subprotocols: []string{"chat.v2", "chat.v1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	if c.Subprotocol() != "chat.v1" {
		t.Errorf("subprotocol %q, want chat.v1", c.Subprotocol())
	}
	if got := resp.Header.Values("Sec-WebSocket-Protocol"); len(got) != 1 {
		t.Errorf("Sec-WebSocket-Protocol values %q, want one", got)
	}

	// A client that does not offer it gets the default protocol.
	c2 := dialOpts(t, s.url("/"), &websocket.DialOptions{Subprotocols: []string{"other"}})
	if c2.Subprotocol() != "" {
		t.Errorf("subprotocol %q, want none", c2.Subprotocol())
	}
}

func TestOrigin(t *testing.T) {
	foreign := &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {"http://localhost:9"}}}

	t.Run("default", func(t *testing.T) {
		s := start(t, edge.Hooks{}, nil)
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		_, resp, err := websocket.Dial(ctx, s.url("/"), foreign)
		if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
			t.Fatalf("foreign origin: err %v, response %v; want 403", err, resp)
		}
		// Same origin is allowed.
		dialOpts(t, s.url("/"), &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {s.http.URL}}})
	})
	t.Run("OriginPatterns", func(t *testing.T) {
		s := start(t, edge.Hooks{}, func(h *longlived.Handler) { h.OriginPatterns = []string{"localhost:9"} })
		dialOpts(t, s.url("/"), foreign)
	})
}

func TestReadLimit(t *testing.T) {
	s := start(t, edge.Hooks{Message: echo}, func(h *longlived.Handler) { h.ReadLimit = 1024 })
	c, p := s.dial(t, "/")

	send(t, c, websocket.MessageText, strings.Repeat("a", 1024))
	expectText(t, c, strings.Repeat("a", 1024))
	send(t, c, websocket.MessageText, strings.Repeat("a", 1025))
	expectClose(t, c, websocket.StatusMessageTooBig)
	s.expectClosed(t, p, 1009)
}

func TestInvalidUTF8(t *testing.T) {
	got := make(chan edge.Data, 1)
	s := start(t, edge.Hooks{Message: func(p edge.Peer, d edge.Data) { got <- d }}, nil)
	c, p := s.dial(t, "/")

	send(t, c, websocket.MessageText, "ok \xff\xfe")
	expectClose(t, c, websocket.StatusInvalidFramePayloadData)
	s.expectClosed(t, p, 1007)
	select {
	case d := <-got:
		t.Fatalf("invalid text reached Hooks.Message: %q", d.Bytes)
	default:
	}
}

func TestHookPanicClosesOnlyThatPeer(t *testing.T) {
	s := start(t, edge.Hooks{Message: func(p edge.Peer, d edge.Data) {
		if d.String() == "boom" {
			panic("hook bug")
		}
		echo(p, d)
	}}, nil)
	bad, badPeer := s.dial(t, "/")
	good, _ := s.dial(t, "/")

	send(t, bad, websocket.MessageText, "boom")
	expectClose(t, bad, websocket.StatusInternalError)
	ev := recv(t, s.errs, "Hooks.Error")
	var pe *edge.PanicError
	if !errors.As(ev.err, &pe) || pe.Value != "hook bug" || ev.peer.ID() != badPeer.ID() {
		t.Fatalf("Hooks.Error(%v, %v), want the bad peer's *edge.PanicError", ev.peer.ID(), ev.err)
	}
	s.expectClosed(t, badPeer, 1011)

	send(t, good, websocket.MessageText, "still here")
	expectText(t, good, "still here")
}

func TestOpenPanic(t *testing.T) {
	s := start(t, edge.Hooks{Open: func(p edge.Peer) { panic("open bug") }}, nil)
	c, p := s.dial(t, "/")
	expectClose(t, c, websocket.StatusInternalError)
	if ev := recv(t, s.errs, "Hooks.Error"); !errors.As(ev.err, new(*edge.PanicError)) {
		t.Fatalf("Hooks.Error got %v, want *edge.PanicError", ev.err)
	}
	s.expectClosed(t, p, 1011)
}

func TestSlowConsumer(t *testing.T) {
	const size = 64 << 10
	s := start(t, edge.Hooks{Open: func(p edge.Peer) {
		if err := p.Subscribe(context.Background(), "t"); err != nil {
			panic(err)
		}
	}}, func(h *longlived.Handler) { h.WriteQueueBytes = 4 * size })
	fast1, _ := s.dial(t, "/s")
	fast2, _ := s.dial(t, "/s")
	slow, slowPeer := s.dial(t, "/s")

	ctx := context.Background()
	publish := func(i int) {
		b := make([]byte, size)
		binary.BigEndian.PutUint64(b, uint64(i))
		if err := s.hub.Publish(ctx, edge.Message{Namespace: "/s", Topic: "t", Data: edge.Binary(b)}); err != nil {
			t.Fatal(err)
		}
		// The fast clients read each message before the next is
		// published: their queues never hold more than one.
		for _, c := range []*websocket.Conn{fast1, fast2} {
			typ, got := read(t, c)
			if typ != websocket.MessageBinary || len(got) != size || binary.BigEndian.Uint64([]byte(got)) != uint64(i) {
				t.Fatalf("fast client got message %d (%d bytes), want %d", binary.BigEndian.Uint64([]byte(got)), len(got), i)
			}
		}
	}

	// The slow client never reads: once the socket buffers between it and
	// the server are full, its queue grows until it overflows.
	var ev errorEvent
	i := 0
	for ; ; i++ {
		if i == 100_000 {
			t.Fatal("slow consumer never detected")
		}
		publish(i)
		select {
		case ev = <-s.errs:
		default:
			continue
		}
		break
	}
	t.Logf("slow consumer detected after %d messages of %d bytes", i+1, size)
	if !errors.Is(ev.err, longlived.ErrSlowConsumer) || ev.peer.ID() != slowPeer.ID() {
		t.Fatalf("Hooks.Error(%s, %v), want the slow peer with ErrSlowConsumer", ev.peer.ID(), ev.err)
	}
	for j := i + 1; j <= i+10; j++ {
		publish(j) // the others keep receiving everything
	}
	if err := slowPeer.Send(ctx, edge.Text("late")); !errors.Is(err, longlived.ErrPeerClosed) {
		t.Errorf("Send to the slow peer: %v, want ErrPeerClosed", err)
	}

	// Now the slow client reads what was sent, then the close frame.
	expectClose(t, slow, longlived.StatusSlowConsumer)
	s.expectClosed(t, slowPeer, longlived.StatusSlowConsumer)
}

// TestSlowConsumerByLag: in a quiet room a client that stops reading is
// found out by how long its messages wait, long before its queue fills.
func TestSlowConsumerByLag(t *testing.T) {
	s := start(t, edge.Hooks{Open: func(p edge.Peer) {
		if err := p.Subscribe(context.Background(), "t"); err != nil {
			panic(err)
		}
	}}, func(h *longlived.Handler) {
		h.WriteQueueBytes = 1 << 30 // the lag, not the queue's size, must find it out
		h.MaxWriteLag = 100 * time.Millisecond
	})
	slow, slowPeer := s.dial(t, "/s")

	// The client never reads: once the socket buffers are full, the
	// message being written waits, and so does every later one. A
	// message a millisecond, 64 KiB each: the queue would take minutes to
	// reach its cap.
	chunk := edge.Binary(make([]byte, 64<<10))
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	var ev errorEvent
	for i := 0; ; i++ {
		if i == 10_000 {
			t.Fatal("slow consumer never detected")
		}
		<-tick.C
		if err := s.hub.Publish(context.Background(), edge.Message{Namespace: "/s", Topic: "t", Data: chunk}); err != nil {
			t.Fatal(err)
		}
		select {
		case ev = <-s.errs:
		default:
			continue
		}
		break
	}
	if !errors.Is(ev.err, longlived.ErrSlowConsumer) || ev.peer.ID() != slowPeer.ID() {
		t.Fatalf("Hooks.Error(%s, %v), want the slow peer with ErrSlowConsumer", ev.peer.ID(), ev.err)
	}
	if got := slowPeer.Send(context.Background(), edge.Text("late")); !errors.Is(got, longlived.ErrPeerClosed) {
		t.Errorf("Send to the slow peer: %v, want ErrPeerClosed", got)
	}
	// When the client reads at last, it gets what was already written,
	// then the close frame.
	expectClose(t, slow, longlived.StatusSlowConsumer)
	s.expectClosed(t, slowPeer, longlived.StatusSlowConsumer)
}

func TestMessageLargerThanTheQueueIsDropped(t *testing.T) {
	s := start(t, edge.Hooks{Open: func(p edge.Peer) {
		if err := p.Subscribe(context.Background(), "t"); err != nil {
			panic(err)
		}
	}}, func(h *longlived.Handler) { h.WriteQueueBytes = 1000 })
	c, p := s.dial(t, "/s")

	ctx := context.Background()
	huge := edge.Text(strings.Repeat("x", 2000))
	if err := s.hub.Publish(ctx, edge.Message{Namespace: "/s", Topic: "t", Data: huge}); err != nil {
		t.Fatal(err)
	}
	ev := recv(t, s.errs, "Hooks.Error")
	if !errors.Is(ev.err, longlived.ErrMessageTooLarge) || ev.peer.ID() != p.ID() {
		t.Fatalf("Hooks.Error(%s, %v), want ErrMessageTooLarge", ev.peer.ID(), ev.err)
	}
	if err := p.Send(ctx, huge); !errors.Is(err, longlived.ErrMessageTooLarge) {
		t.Fatalf("Send: %v", err)
	}
	// The peer is still connected and gets what fits.
	if err := s.hub.Publish(ctx, edge.Message{Namespace: "/s", Topic: "t", Data: edge.Text("small")}); err != nil {
		t.Fatal(err)
	}
	if _, got := read(t, c); got != "small" {
		t.Fatalf("got %q", got)
	}
}

func TestWriteTimeoutDropsAStuckPeer(t *testing.T) {
	s := start(t, edge.Hooks{Open: func(p edge.Peer) {
		if err := p.Subscribe(context.Background(), "t"); err != nil {
			panic(err)
		}
	}}, func(h *longlived.Handler) {
		h.WriteQueueBytes = 1 << 30 // never a slow consumer: the write itself must time out
		h.WriteTimeout = 50 * time.Millisecond
	})
	_, p := s.dial(t, "/s") // never reads

	// More than the socket buffers between the two ends can hold.
	chunk := edge.Binary(make([]byte, 64<<10))
	for range 400 {
		if err := s.hub.Publish(context.Background(), edge.Message{Namespace: "/s", Topic: "t", Data: chunk}); err != nil {
			t.Fatal(err)
		}
	}
	ev := recv(t, s.errs, "Hooks.Error")
	if !errors.Is(ev.err, os.ErrDeadlineExceeded) || ev.peer.ID() != p.ID() {
		t.Fatalf("Hooks.Error(%s, %v), want a write deadline exceeded", ev.peer.ID(), ev.err)
	}
	s.expectClosed(t, p, 1006)
}

func TestHeartbeat(t *testing.T) {
	t.Run("unresponsive", func(t *testing.T) {
		s := start(t, edge.Hooks{}, func(h *longlived.Handler) {
			h.PingInterval = 5 * time.Millisecond
			h.PingTimeout = 20 * time.Millisecond
		})
		_, p := s.dial(t, "/") // never reads, so never answers a ping
		ev := recv(t, s.errs, "Hooks.Error")
		if !errors.Is(ev.err, longlived.ErrPingTimeout) || ev.peer.ID() != p.ID() {
			t.Fatalf("Hooks.Error(%s, %v), want ErrPingTimeout", ev.peer.ID(), ev.err)
		}
		s.expectClosed(t, p, 1006)
	})
	t.Run("responsive", func(t *testing.T) {
		s := start(t, edge.Hooks{Message: echo}, func(h *longlived.Handler) {
			h.PingInterval = time.Millisecond
			h.PingTimeout = wait
		})
		pings := make(chan struct{}, 100)
		c := dialOpts(t, s.url("/"), &websocket.DialOptions{OnPingReceived: func(context.Context, []byte) bool {
			select {
			case pings <- struct{}{}:
			default:
			}
			return true
		}})
		recv(t, s.opened, "Hooks.Open")
		done := make(chan struct{})
		go func() { // answers pings while it waits for the echo
			defer close(done)
			for range 3 {
				<-pings
			}
			send(t, c, websocket.MessageText, "after pings")
		}()
		expectText(t, c, "after pings")
		<-done
		select {
		case ev := <-s.errs:
			t.Fatalf("responsive peer reported: %v", ev.err)
		default:
		}
	})
}

func TestHandlerClose(t *testing.T) {
	s := start(t, relay(), nil)
	a, pa := s.dial(t, "/")
	b, pb := s.dial(t, "/")

	results := make(chan websocket.StatusCode, 2)
	for _, c := range []*websocket.Conn{a, b} {
		go func() {
			_, _, err := c.Read(context.Background())
			results <- websocket.CloseStatus(err)
		}()
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := s.handler.Close(ctx); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if code := recv(t, results, "client close"); code != websocket.StatusGoingAway {
			t.Errorf("client closed with %v, want 1001", code)
		}
	}
	closed := map[string]int{}
	for range 2 {
		ev := recv(t, s.closed, "Hooks.Close")
		if ev.code != 1001 {
			t.Errorf("Hooks.Close code %d, want 1001", ev.code)
		}
		closed[ev.peer.ID()]++
	}
	if closed[pa.ID()] != 1 || closed[pb.ID()] != 1 {
		t.Errorf("Hooks.Close calls %v, want one per peer", closed)
	}
	// The Handler did not make the Hub, so it leaves it open.
	if err := s.hub.Publish(ctx, edge.Message{Topic: "t", Data: edge.Text("x")}); err != nil {
		t.Errorf("Publish after Handler.Close: %v; the Hub should stay open", err)
	}
	_, resp, err := websocket.Dial(ctx, s.url("/"), nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("dial after Close: %v, %v; want 503", err, resp)
	}
}

func TestHandlerCloseDropsWhenContextEnds(t *testing.T) {
	s := start(t, edge.Hooks{}, nil)
	_, p := s.dial(t, "/") // never reads, so never answers the close frame
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.handler.Close(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Close: %v, want context.Canceled", err)
	}
	s.expectClosed(t, p, 1001)
}

func TestClientClose(t *testing.T) {
	s := start(t, edge.Hooks{}, nil)
	c, p := s.dial(t, "/")
	if err := c.Close(4000, "bye"); err != nil {
		t.Fatal(err)
	}
	if ev := s.expectClosed(t, p, 4000); ev.reason != "bye" {
		t.Errorf("reason %q, want bye", ev.reason)
	}

	c2, p2 := s.dial(t, "/")
	c2.CloseNow() // no close frame
	s.expectClosed(t, p2, 1006)
}

func TestPeerClose(t *testing.T) {
	sendErr := make(chan error, 1)
	s := start(t, edge.Hooks{Message: func(p edge.Peer, d edge.Data) {
		ctx := context.Background()
		if err := p.Close(1006, ""); err == nil {
			panic("Close accepted status 1006")
		}
		if err := p.Send(ctx, edge.Text("bye")); err != nil {
			panic(err)
		}
		if err := p.Close(4001, "asked"); err != nil {
			panic(err)
		}
		sendErr <- p.Send(ctx, edge.Text("too late"))
	}}, nil)
	c, p := s.dial(t, "/")
	send(t, c, websocket.MessageText, "quit")
	expectText(t, c, "bye") // what was queued before Close is sent first
	expectClose(t, c, 4001)
	if ev := s.expectClosed(t, p, 4001); ev.reason != "asked" {
		t.Errorf("reason %q, want asked", ev.reason)
	}
	if err := recv(t, sendErr, "Send result"); !errors.Is(err, longlived.ErrPeerClosed) {
		t.Errorf("Send after Close: %v, want ErrPeerClosed", err)
	}
	select {
	case ev := <-s.errs:
		t.Errorf("unexpected Hooks.Error: %v", ev.err)
	default:
	}
}

func TestPeerTopics(t *testing.T) {
	s := start(t, edge.Hooks{}, nil)
	_, p := s.dial(t, "/")
	ctx := context.Background()
	for _, topic := range []string{"b", "a"} {
		if err := p.Subscribe(ctx, topic); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Unsubscribe(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	topics, err := p.Topics(ctx)
	if err != nil || len(topics) != 1 || topics[0] != "a" {
		t.Fatalf("Topics %v, %v; want [a]", topics, err)
	}
	if err := p.Subscribe(ctx, ""); !errors.Is(err, edge.ErrInvalidTopic) {
		t.Fatalf("Subscribe(\"\"): %v, want edge.ErrInvalidTopic", err)
	}
	if err := p.Send(ctx, edge.Data{Bytes: []byte{0xff}}); err == nil {
		t.Fatal("Send accepted invalid UTF-8 text")
	}
}

// ServeHTTP hands the connection to a goroutine of the peer's own and
// returns, so that net/http's serving goroutine and request do not stay
// for the life of the connection; Handler.Close still waits for the peer.
func TestServeHTTPReturnsWhileThePeerIsServed(t *testing.T) {
	hub, err := edge.New(edge.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hub.Close() })
	closed := make(chan int, 1)
	h := longlived.New(hub, edge.Hooks{
		Message: echo,
		Close:   func(p edge.Peer, code int, reason string) { closed <- code },
	})
	returned := make(chan struct{}, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r)
		returned <- struct{}{}
	}))
	t.Cleanup(srv.Close)

	c := dialOpts(t, "ws"+strings.TrimPrefix(srv.URL, "http")+"/", nil)
	recv(t, returned, "ServeHTTP to return")
	send(t, c, websocket.MessageText, "still here")
	expectText(t, c, "still here")
	select {
	case code := <-closed:
		t.Fatalf("Hooks.Close(%d) while the client is connected", code)
	default:
	}

	go func() { _, _, _ = c.Read(context.Background()) }() // answers the close frame
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := h.Close(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-closed:
		if code != 1001 {
			t.Errorf("Hooks.Close code %d, want 1001", code)
		}
	default:
		t.Error("Handler.Close returned before Hooks.Close ran")
	}
	noPeerGoroutines(t)
}

// panickyConns is a listener whose connections panic in Read once armed,
// as a bug below the read loop would.
type panickyConns struct {
	net.Listener
	mu    sync.Mutex
	conns []*panickyConn
}

func (l *panickyConns) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	pc := &panickyConn{Conn: c}
	l.mu.Lock()
	l.conns = append(l.conns, pc)
	l.mu.Unlock()
	return pc, nil
}

func (l *panickyConns) arm(i int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.conns[i].armed.Store(true)
}

type panickyConn struct {
	net.Conn
	armed atomic.Bool
}

func (c *panickyConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if c.armed.Load() {
		panic("conn bug")
	}
	return n, err
}

// TestReadPanicDropsOnlyThatPeer: a panic in what reads a peer's
// connection drops that connection, is reported, and leaves the process
// and the other peers as they were.
func TestReadPanicDropsOnlyThatPeer(t *testing.T) {
	conns := &panickyConns{}
	s := startOn(t, edge.Hooks{Message: echo}, nil, func(l net.Listener) net.Listener {
		conns.Listener = l
		return conns
	})
	bad, badPeer := s.dial(t, "/")
	good, _ := s.dial(t, "/")

	conns.arm(0)
	send(t, bad, websocket.MessageText, "boom")
	ev := recv(t, s.errs, "Hooks.Error")
	var pe *edge.PanicError
	if !errors.As(ev.err, &pe) || pe.Value != "conn bug" || len(pe.Stack) == 0 || ev.peer.ID() != badPeer.ID() {
		t.Fatalf("Hooks.Error(%v, %v), want the bad peer's *edge.PanicError", ev.peer.ID(), ev.err)
	}
	s.expectClosed(t, badPeer, 1006)
	if _, _, err := bad.Read(context.Background()); err == nil {
		t.Fatal("the bad peer's connection is still open")
	}

	send(t, good, websocket.MessageText, "still here")
	expectText(t, good, "still here")
}
