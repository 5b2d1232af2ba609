package longlived_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/longlived"
)

// A message whose wait for the inbound limits outlasts PingTimeout holds the
// client's pong behind it: the peer is alive, being paced, and is not
// dropped as unresponsive.
func TestPacedMessageLongerThanPingTimeout(t *testing.T) {
	s := start(t, edge.Hooks{Message: echo}, func(h *longlived.Handler) {
		h.PingInterval, h.PingTimeout = 200*time.Millisecond, 300*time.Millisecond
		h.ReadLimit = 1 << 20
		h.BytesPerSecond = 20_000 // a 40 KB message waits about 2 s
		h.InboundBurst = 50 * time.Millisecond
	})
	c, _ := s.dial(t, "/")
	send(t, c, websocket.MessageBinary, string(make([]byte, 40_000)))
	if typ, got := read(t, c); typ != websocket.MessageBinary || len(got) != 40_000 { // read answers pings meanwhile
		t.Fatalf("echo: %v of %d bytes", typ, len(got))
	}
	select {
	case ev := <-s.errs:
		t.Fatalf("Hooks.Error(%s, %v) while paced, want none", ev.peer.ID(), ev.err)
	case ev := <-s.closed:
		t.Fatalf("peer %s closed with %d while paced", ev.peer.ID(), ev.code)
	default:
	}
}

// A message that the read loop holds back for the inbound limits is not
// handed to Hooks.Message once the peer is closing: a kicked or evicted peer
// publishes nothing more.
func TestHeldMessageIsDroppedWhenThePeerCloses(t *testing.T) {
	got := make(chan string, 4)
	s := start(t, edge.Hooks{Message: func(p edge.Peer, d edge.Data) { got <- d.String() }}, func(h *longlived.Handler) {
		h.BytesPerSecond = 1000
		h.InboundBurst = time.Second // the first 1,000 bytes pass at once
	})
	c, p := s.dial(t, "/")
	send(t, c, websocket.MessageText, "first")
	send(t, c, websocket.MessageText, string(make([]byte, 2000))) // waits about 2 s
	if m := recv(t, got, "the first message"); m != "first" {
		t.Fatalf("got %q", m)
	}
	if err := p.Close(4000, "kicked"); err != nil {
		t.Fatal(err)
	}
	c.CloseRead(context.Background()) // answers the close handshake
	s.expectClosed(t, p, 4000)
	select {
	case m := <-got:
		t.Fatalf("Hooks.Message got a message of %d bytes after Close", len(m))
	default:
	}
}

// A client that crosses ReadLimit inside a frame announcing a huge payload,
// then goes silent, is closed with 1009 within the close handshake's bound:
// the handshake does not wait for the rest of the frame.
func TestTooBigThenSilentIsClosed(t *testing.T) {
	s := start(t, edge.Hooks{}, func(h *longlived.Handler) { h.ReadLimit = 1000 })
	rc := s.dialRaw(t, "/", nil)
	p := recv(t, s.opened, "Hooks.Open")
	rc.write(frame(fin|opBinary, 1<<30, make([]byte, 5000)))
	rc.expectClose(1009)
	s.expectClosed(t, p, 1009)
}

// A client that pings far more often than any client needs is closed: each
// ping costs a pong written back.
func TestPingFloodIsClosed(t *testing.T) {
	s := start(t, edge.Hooks{}, nil)
	rc := s.dialRaw(t, "/", nil)
	p := recv(t, s.opened, "Hooks.Open")
	pings := make([][]byte, 500)
	for i := range pings {
		pings[i] = whole(fin|opPing, "")
	}
	rc.write(pings...)
	rc.expectClose(1008)
	if ev := recv(t, s.errs, "Hooks.Error"); !errors.Is(ev.err, longlived.ErrTooManyFrames) {
		t.Fatalf("Hooks.Error(%v), want ErrTooManyFrames", ev.err)
	}
	s.expectClosed(t, p, 1008)
}
