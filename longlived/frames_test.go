package longlived_test

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/longlived"
)

// Frame opcodes and flags, as RFC 6455 numbers them.
const (
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xa
	fin            = 0x80
)

// rawClient is a WebSocket client written by hand on a TCP connection, to
// send frames that no library would.
type rawClient struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

// dialRaw makes the opening handshake on path, writing early right after
// the request in the same write, and returns once the server has answered
// 101.
func (s *server) dialRaw(t *testing.T, path string, early []byte) *rawClient {
	t.Helper()
	addr := s.http.Listener.Addr().String()
	c, err := net.DialTimeout("tcp", addr, wait)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	req := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", path, addr)
	if _, err := c.Write(append([]byte(req), early...)); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(wait))
	rc := &rawClient{t: t, c: c, br: bufio.NewReader(c)}
	status, err := rc.br.ReadString('\n')
	if err != nil || !strings.HasPrefix(status, "HTTP/1.1 101 ") {
		t.Fatalf("handshake: %q, %v", status, err)
	}
	for {
		line, err := rc.br.ReadString('\n')
		if err != nil {
			t.Fatalf("handshake: %v", err)
		}
		if line == "\r\n" {
			return rc
		}
	}
}

// frame is one masked client frame: first byte b0 (FIN and opcode), a
// header announcing length bytes, and payload, which may be shorter.
func frame(b0 byte, length int, payload []byte) []byte {
	var b []byte
	switch {
	case length < 126:
		b = []byte{b0, 0x80 | byte(length)}
	case length <= 0xffff:
		b = binary.BigEndian.AppendUint16([]byte{b0, 0x80 | 126}, uint16(length))
	default:
		b = binary.BigEndian.AppendUint64([]byte{b0, 0x80 | 127}, uint64(length))
	}
	var key [4]byte
	_, _ = rand.Read(key[:])
	b = append(b, key[:]...)
	for i, c := range payload {
		b = append(b, c^key[i%4])
	}
	return b
}

// whole is a frame carrying all of payload.
func whole(b0 byte, payload string) []byte { return frame(b0, len(payload), []byte(payload)) }

func (rc *rawClient) write(frames ...[]byte) {
	rc.t.Helper()
	if _, err := rc.c.Write(bytes.Join(frames, nil)); err != nil {
		rc.t.Fatalf("raw write: %v", err)
	}
}

// readFrame reads one server frame (unmasked, unfragmented).
func (rc *rawClient) readFrame() (op byte, payload []byte, err error) {
	var h [2]byte
	if _, err := io.ReadFull(rc.br, h[:]); err != nil {
		return 0, nil, err
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var l [2]byte
		_, err = io.ReadFull(rc.br, l[:])
		n = uint64(binary.BigEndian.Uint16(l[:]))
	case 127:
		var l [8]byte
		_, err = io.ReadFull(rc.br, l[:])
		n = binary.BigEndian.Uint64(l[:])
	}
	if err != nil {
		return 0, nil, err
	}
	payload = make([]byte, n)
	_, err = io.ReadFull(rc.br, payload)
	return h[0] & 0x0f, payload, err
}

// expectClose reads frames until the server's close frame and checks its
// status.
func (rc *rawClient) expectClose(code int) {
	rc.t.Helper()
	_ = rc.c.SetReadDeadline(time.Now().Add(wait))
	for {
		op, payload, err := rc.readFrame()
		if err != nil {
			rc.t.Fatalf("reading to the close frame: %v", err)
		}
		if op != opClose {
			continue
		}
		if len(payload) < 2 || int(binary.BigEndian.Uint16(payload)) != code {
			rc.t.Fatalf("close frame %q, want status %d", payload, code)
		}
		return
	}
}

// chatRoom is a server relaying every message to every other peer, with
// a watcher and a healthy peer connected.
type chatRoom struct {
	*server
	got     chan string // what Hooks.Message received
	watcher *websocket.Conn
	healthy *websocket.Conn
}

func newChatRoom(t *testing.T, configure func(*longlived.Handler)) *chatRoom {
	t.Helper()
	r := &chatRoom{got: make(chan string, 1024)}
	hooks := relay()
	publish := hooks.Message
	hooks.Message = func(p edge.Peer, d edge.Data) {
		r.got <- d.String()
		publish(p, d)
	}
	r.server = start(t, hooks, configure)
	r.watcher, _ = r.dial(t, "/")
	r.healthy, _ = r.dial(t, "/")
	return r
}

// proveDelivery has the healthy peer send a message and checks that it is
// the next one the watcher and Hooks.Message see: nothing else was
// delivered before it.
func (r *chatRoom) proveDelivery(t *testing.T, msg string) {
	t.Helper()
	send(t, r.healthy, websocket.MessageText, msg)
	if got := recv(t, r.got, "Hooks.Message"); got != msg {
		t.Fatalf("Hooks.Message got %q before %q", got, msg)
	}
	expectText(t, r.watcher, msg)
}

// An unfinished message, cut off by the end of the connection, reaches
// neither Hooks.Message nor the other peers; the sender ends as a dropped
// connection.
func TestUnfinishedMessageIsNotDelivered(t *testing.T) {
	for _, tc := range []struct {
		name   string
		frames [][]byte
	}{
		{"one fragment", [][]byte{whole(opText, "PART1-ONLY")}},
		{"two fragments", [][]byte{whole(opText, "FRAG-A"), whole(opContinuation, "|FRAG-B")}},
		{"fragment then ping", [][]byte{whole(opText, "FRAG-A"), whole(fin|opPing, "p")}},
		{"announced payload missing", [][]byte{frame(fin|opText, 20, nil)}},
		{"payload cut short", [][]byte{frame(fin|opText, 20, []byte("SHORT"))}},
		{"final fragment cut short", [][]byte{whole(opText, "FRAG-A"), frame(fin|opContinuation, 300, []byte("|FRAG-B"))}},
		{"binary fragment", [][]byte{whole(opBinary, "BIN-PART")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newChatRoom(t, nil)
			attacker := r.dialRaw(t, "/", nil)
			p := recv(t, r.opened, "Hooks.Open")
			attacker.write(tc.frames...)
			attacker.c.Close()
			r.expectClosed(t, p, 1006)
			r.proveDelivery(t, "HEALTHY")
		})
	}
}

// Frames of every header form, fragments with a control frame between
// them, and frames sent along with the handshake all make complete
// messages, which are delivered.
func TestFramesOfEveryFormAreDelivered(t *testing.T) {
	r := newChatRoom(t, func(h *longlived.Handler) { h.ReadLimit = 1 << 20 })
	big := strings.Repeat("x", 70000) // a 64-bit length
	mid := strings.Repeat("y", 300)   // a 16-bit length
	c := r.dialRaw(t, "/", whole(fin|opText, "EARLY"))
	recv(t, r.opened, "Hooks.Open")
	c.write(
		whole(opText, "A"), whole(fin|opPing, "p1"), whole(opContinuation, mid),
		whole(opContinuation, ""), whole(fin|opPong, ""), whole(fin|opContinuation, big),
		whole(fin|opBinary, ""),
	)
	for _, want := range []string{"EARLY", "A" + mid + big, ""} {
		if got := recv(t, r.got, "Hooks.Message"); got != want {
			t.Fatalf("Hooks.Message got %d bytes %.20q…, want %d bytes %.20q…", len(got), got, len(want), want)
		}
	}
	expectText(t, r.watcher, "EARLY")
	expectText(t, r.watcher, "A"+mid+big)
	if typ, got := read(t, r.watcher); typ != websocket.MessageBinary || got != "" {
		t.Fatalf("watcher read %v %q, want an empty binary message", typ, got)
	}
	// The ping was answered, so the stream was followed in step.
	_ = c.c.SetReadDeadline(time.Now().Add(wait))
	if op, payload, err := c.readFrame(); err != nil || op != opPong || string(payload) != "p1" {
		t.Fatalf("raw client read %#x %q, %v; want the pong p1", op, payload, err)
	}
	// Then the same client leaves a message unfinished.
	c.write(whole(opText, "PART1-ONLY"))
	c.c.Close()
	r.proveDelivery(t, "HEALTHY")
}

// A message of too many frames, and too many frames a second, close the
// peer with 1008 and are reported with ErrTooManyFrames; the other peers
// are served.
func TestTooManyFrames(t *testing.T) {
	pings := make([][]byte, 400)
	for i := range pings {
		pings[i] = whole(fin|opPing, "")
	}
	empties := [][]byte{whole(opText, "a")}
	for range 40 {
		empties = append(empties, whole(opContinuation, ""))
	}
	var fragmented [][]byte // messages of five frames each
	for range 100 {
		fragmented = append(fragmented, whole(opText, "a"), whole(opContinuation, ""),
			whole(opContinuation, ""), whole(opContinuation, ""), whole(fin|opContinuation, ""))
	}
	for _, tc := range []struct {
		name      string
		configure func(*longlived.Handler)
		frames    [][]byte
	}{
		{"empty continuations in one message", func(h *longlived.Handler) { h.MaxMessageFrames = 16 }, empties},
		{"pings", func(h *longlived.Handler) { h.FramesPerSecond = 100 }, pings},
		{"fragmented messages", func(h *longlived.Handler) { h.FramesPerSecond = 100; h.MessagesPerSecond = -1 }, fragmented},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newChatRoom(t, tc.configure)
			attacker := r.dialRaw(t, "/", nil)
			p := recv(t, r.opened, "Hooks.Open")
			attacker.write(tc.frames...)
			attacker.expectClose(1008)
			ev := recv(t, r.errs, "Hooks.Error")
			if ev.peer.ID() != p.ID() || !errors.Is(ev.err, longlived.ErrTooManyFrames) {
				t.Fatalf("Hooks.Error(%s, %v), want peer %s with ErrTooManyFrames", ev.peer.ID(), ev.err, p.ID())
			}
			r.expectClosed(t, p, 1008)
			r.proveDeliveryAfterFlood(t, "HEALTHY")
		})
	}
}

// proveDeliveryAfterFlood is proveDelivery for a room whose watcher may
// have received messages of the flood first.
func (r *chatRoom) proveDeliveryAfterFlood(t *testing.T, msg string) {
	t.Helper()
	send(t, r.healthy, websocket.MessageText, msg)
	for got := ""; got != msg; {
		got = recv(t, r.got, "Hooks.Message")
	}
	for {
		if _, got := read(t, r.watcher); got == msg {
			return
		}
	}
}

// FramesPerSecond counts no message's first frame: a client sending many
// small messages is paced by MessagesPerSecond alone, and loses none.
func TestFramesPerSecondSparesMessages(t *testing.T) {
	r := newChatRoom(t, func(h *longlived.Handler) { h.FramesPerSecond, h.MessagesPerSecond = 100, -1 })
	c := r.dialRaw(t, "/", nil)
	recv(t, r.opened, "Hooks.Open")
	var frames [][]byte
	for i := range 500 {
		frames = append(frames, whole(fin|opText, fmt.Sprint(i)))
	}
	c.write(frames...)
	for i := range 500 {
		if got := recv(t, r.got, "Hooks.Message"); got != fmt.Sprint(i) {
			t.Fatalf("Hooks.Message got %q, want %d", got, i)
		}
	}
	r.proveDeliveryAfterFlood(t, "HEALTHY")
}
