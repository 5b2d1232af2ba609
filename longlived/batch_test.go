package longlived_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/longlived"
)

// writeCounter is a listener whose connections count their writes: one
// per system call.
type writeCounter struct {
	net.Listener
	writes atomic.Int64
}

func (l *writeCounter) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &countedConn{Conn: c, writes: &l.writes}, nil
}

type countedConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c *countedConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// serverFrame is the frame the server sends for a message: FIN, the
// opcode, the shortest length encoding, no mask, the payload.
func serverFrame(op byte, payload []byte) []byte {
	b := []byte{fin | op}
	switch n := len(payload); {
	case n < 126:
		b = append(b, byte(n))
	case n <= 0xffff:
		b = binary.BigEndian.AppendUint16(append(b, 126), uint16(n))
	default:
		b = binary.BigEndian.AppendUint64(append(b, 127), uint64(n))
	}
	return append(b, payload...)
}

// TestBatchedWritesKeepTheFrames: messages queued while the writer is busy
// go out together, in far fewer writes than messages, and what the client
// receives is exactly the frames of each message, in order, a pong at a
// frame boundary, then the close frame.
func TestBatchedWritesKeepTheFrames(t *testing.T) {
	counter := &writeCounter{}
	s := startOn(t, edge.Hooks{}, func(h *longlived.Handler) {
		h.WriteQueueBytes = 64 << 20
	}, func(l net.Listener) net.Listener {
		counter.Listener = l
		return counter
	})
	rc := s.dialRaw(t, "/b", nil)
	p := recv(t, s.opened, "Hooks.Open")

	// The first message is larger than the socket buffers between the
	// server and a client that is not reading: its write blocks, and the
	// others queue up behind it.
	big := bytes.Repeat([]byte{0xb5}, 24<<20)
	msgs := []edge.Data{edge.Binary(big)}
	for _, n := range []int{0, 1, 125, 126, 127, 1000, 20 << 10, 20 << 10, 65535, 65536, 100 << 10} {
		msgs = append(msgs, edge.Text(strings.Repeat("x", n)), edge.Binary(bytes.Repeat([]byte{byte(n)}, n)))
	}
	for i := range 300 {
		msgs = append(msgs, edge.Text(strings.Repeat(string(rune('a'+i%26)), 100)))
	}
	ctx := context.Background()
	for _, d := range msgs {
		if err := p.Send(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Close(4000, "done"); err != nil {
		t.Fatal(err)
	}
	// A ping while the writer is blocked: its pong joins the writes at a
	// frame boundary.
	rc.write(whole(fin|opPing, "p1"))

	var want [][]byte
	for _, d := range msgs {
		op := byte(opText)
		if d.Binary {
			op = opBinary
		}
		want = append(want, serverFrame(op, d.Bytes))
	}
	want = append(want, serverFrame(opClose, append([]byte{0x0f, 0xa0}, "done"...))) // 4000
	pong := serverFrame(opPong, []byte("p1"))

	_ = rc.c.SetReadDeadline(time.Now().Add(wait))
	pongs := 0
	for i := 0; i < len(want); {
		head, err := rc.br.Peek(1)
		if err != nil {
			t.Fatalf("frame %d of %d: %v", i, len(want), err)
		}
		exp := want[i]
		if head[0] == fin|opPong {
			exp, pongs = pong, pongs+1
		} else {
			i++
		}
		got := make([]byte, len(exp))
		if _, err := io.ReadFull(rc.br, got); err != nil {
			t.Fatalf("frame %d of %d: %v", i, len(want), err)
		}
		if !bytes.Equal(got, exp) {
			t.Fatalf("frame %d of %d: got % x..., want % x... (%d bytes)", i, len(want), got[:min(len(got), 16)], exp[:min(len(exp), 16)], len(exp))
		}
	}
	if pongs != 1 {
		t.Errorf("%d pongs, want 1", pongs)
	}
	rc.write(whole(fin|opClose, "\x0f\xa0"))
	s.expectClosed(t, p, 4000)

	// The handshake, the large message (a header and the rest), the
	// small ones in batches of at most 32 KiB, the pong, the close.
	if n := counter.writes.Load(); n > 30 {
		t.Errorf("%d writes for %d messages, want at most 30", n, len(msgs))
	} else {
		t.Logf("%d writes for %d messages", n, len(msgs))
	}
}

// TestClientCloseDuringABatch: a client that closes while the writer is in
// the middle of its batches gets the answer to its close frame, after whole
// frames of the messages and with none after it, and the peer ends with
// the client's status.
func TestClientCloseDuringABatch(t *testing.T) {
	s := start(t, edge.Hooks{}, func(h *longlived.Handler) { h.WriteQueueBytes = 64 << 20 })
	rc := s.dialRaw(t, "/c", nil)
	p := recv(t, s.opened, "Hooks.Open")

	// The first message blocks the writer until the client reads; the
	// client's close frame is read by the server meanwhile.
	msgs := []edge.Data{edge.Binary(bytes.Repeat([]byte{0xb5}, 24<<20))}
	for i := range 2000 {
		msgs = append(msgs, edge.Text(strings.Repeat(string(rune('a'+i%26)), 100)))
	}
	ctx := context.Background()
	for _, d := range msgs {
		if err := p.Send(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	rc.write(whole(fin|opClose, "\x03\xe8bye")) // 1000

	_ = rc.c.SetReadDeadline(time.Now().Add(wait))
	for i := 0; ; i++ {
		op, payload, err := rc.readFrame()
		if err != nil {
			t.Fatalf("after %d frames: %v, want the close frame", i, err)
		}
		if op == opClose {
			if !bytes.Equal(payload, []byte("\x03\xe8bye")) && !bytes.Equal(payload, []byte("\x03\xe8")) {
				t.Fatalf("close frame %q, want status 1000", payload)
			}
			// Nothing follows a close frame: the connection ends.
			if op, _, err := rc.readFrame(); err == nil {
				t.Fatalf("a frame with opcode %d after the close frame", op)
			}
			break
		}
		if i >= len(msgs) {
			t.Fatalf("frame %d: more frames than messages", i)
		}
		want, wantOp := msgs[i], byte(opText)
		if want.Binary {
			wantOp = opBinary
		}
		if op != wantOp || !bytes.Equal(payload, want.Bytes) {
			t.Fatalf("frame %d: opcode %d, %d bytes, want message %d", i, op, len(payload), i)
		}
	}
	s.expectClosed(t, p, 1000)
}
