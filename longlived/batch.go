package longlived

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
)

// batchBytes bounds the bytes one batch of writes holds before it goes out:
// the frames of the messages the writer takes from the queue at once, and
// the buffer that gathers them. A message larger than that goes out in a
// batch of its own, written through.
const batchBytes = 32 << 10

// writeBufferSize is the size of coder/websocket's bufio.Writer on a peer's
// connection. The library flushes it at the end of every frame; frames of
// the peer's messages go through a batchWriter, which gathers them, so the
// buffer only needs to hold a whole control frame (2 bytes of header and at
// most 125 of payload), so that a pong or a ping written by another goroutine
// still goes out in one write.
const writeBufferSize = 256

// readBufferSize is the size of coder/websocket's bufio.Reader on a peer's
// connection, which net/http makes 4 KiB. A frame header and a small message
// are read through it; a payload at least as long is read into the message
// at once, without it.
const readBufferSize = 1 << 10

// batchWriter is the writer underneath coder/websocket's bufio.Writer on a
// peer's connection. While it is corked, what the library flushes (whole
// frames: it flushes at the end of each) is appended to a buffer, which
// uncork writes to the connection in one system call. So the writer, having
// corked, adds every message it took from the queue to the batch, with
// writeMessage, and sends them all at once: the frames on the wire are those
// the library makes of the same messages, only the system calls change.
//
// The library also writes from other goroutines: pongs from the read loop,
// pings, close frames. A ping or a pong written while the writer is corked
// joins the batch, in the order the library wrote it, and goes out when the
// writer uncorks, which it does as soon as it has written the batch,
// without waiting for anything else. A close frame goes out at once, with
// what the batch holds before it: the library closes the connection right
// after the close frame that answers the client's. To tell, batchWriter
// follows the frame headers in what it is given. Writes to the connection are serialized by mu,
// so frames go out in the order they were written, and one that arrives
// while a batch goes out waits for that write, bounded by the connection's
// write deadline, as it would wait for the connection anyway.
type batchWriter struct {
	conn net.Conn   // the hijacked connection, without the frame tracker
	pool *sync.Pool // of *[]byte, shared by the Handler's peers

	mu        sync.Mutex
	corked    bool
	buf       *[]byte // the batch, from pool while corked; nil otherwise
	remaining uint64  // payload bytes of the frame under way still to come
	lost      bool    // a frame header was split: frames are no longer followed
	closeSent bool    // a close frame went by: no data frame may follow it
	header    [10]byte
}

// errUnfollowed is what writeMessage returns when the frames written so far
// can no longer be followed, so that a message must go through the
// library's own writer.
var errUnfollowed = errors.New("longlived: frames not followed")

// writeMessage adds the frame of one message to the batch: the frame
// coder/websocket makes of a message written with Conn.Write, byte for
// byte (FIN, the opcode, the shortest length encoding, no mask: a server
// sends none, and compression is never negotiated), without the library's
// locks and checks for each message, which cost more than the system call
// the batch saves. It is called between cork and uncork, by the writer
// alone; frames the library writes meanwhile from other goroutines (pongs,
// pings) are whole, and take their place between the messages. A message
// that does not fit the batch goes out with what it holds, in one system
// call. After a close frame it returns net.ErrClosed, as the library does.
func (w *batchWriter) writeMessage(bin bool, p []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.closeSent:
		return net.ErrClosed
	case !w.corked || w.lost || w.remaining > 0:
		return errUnfollowed
	}
	h := w.header[:0]
	if bin {
		h = append(h, 0x80|0x2)
	} else {
		h = append(h, 0x80|0x1)
	}
	switch n := len(p); {
	case n < 126:
		h = append(h, byte(n))
	case n <= 0xffff:
		h = binary.BigEndian.AppendUint16(append(h, 126), uint16(n))
	default:
		h = binary.BigEndian.AppendUint64(append(h, 127), uint64(n))
	}
	if w.buf == nil {
		w.buf = w.get()
	}
	if len(*w.buf)+len(h)+len(p) <= batchBytes {
		*w.buf = append(append(*w.buf, h...), p...)
		return nil
	}
	bufs := net.Buffers{*w.buf, h, p}
	_, err := bufs.WriteTo(w.conn)
	*w.buf = (*w.buf)[:0]
	return err
}

// Write implements io.Writer.
func (w *batchWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	// A close frame goes out at once, after what the batch holds: the
	// library may close the connection as soon as it has written it.
	if w.follow(p) && w.corked {
		if w.buf == nil {
			w.buf = w.get()
		}
		if len(*w.buf)+len(p) <= batchBytes {
			*w.buf = append(*w.buf, p...)
			return len(p), nil
		}
	}
	if w.buf == nil || len(*w.buf) == 0 {
		return w.conn.Write(p)
	}
	// What the batch holds goes first, in the same system call.
	held := len(*w.buf)
	bufs := net.Buffers{*w.buf, p}
	n, err := bufs.WriteTo(w.conn)
	*w.buf = (*w.buf)[:0]
	if written := int(n) - held; written < len(p) {
		if err == nil {
			err = fmt.Errorf("short write of %d of %d bytes", written, len(p))
		}
		return max(written, 0), err
	}
	return len(p), err
}

// follow follows the frames in p, the next bytes written, and reports
// whether p may be held: it holds no close frame, and the frames were
// followed so far. The library flushes at the end of every frame, into
// a buffer larger than any header, so a header is never split between
// writes; if one ever is, nothing more is held.
func (w *batchWriter) follow(p []byte) bool {
	hold := true
	for len(p) > 0 && !w.lost {
		if w.remaining > 0 {
			k := min(uint64(len(p)), w.remaining)
			p, w.remaining = p[k:], w.remaining-k
			continue
		}
		n := 2
		if len(p) >= 2 {
			switch p[1] & 0x7f {
			case 126:
				n += 2
			case 127:
				n += 8
			}
			if p[1]&0x80 != 0 {
				n += 4 // a masking key, which a server does not send
			}
		}
		if len(p) < n {
			w.lost = true
			break
		}
		if p[0]&0x0f == 0x8 {
			hold, w.closeSent = false, true
		}
		switch p[1] & 0x7f {
		case 126:
			w.remaining = uint64(binary.BigEndian.Uint16(p[2:]))
		case 127:
			w.remaining = binary.BigEndian.Uint64(p[2:])
		default:
			w.remaining = uint64(p[1] & 0x7f)
		}
		p = p[n:]
	}
	return hold && !w.lost
}

// cork has what is written from now on gathered, until uncork.
func (w *batchWriter) cork() {
	w.mu.Lock()
	w.corked = true
	w.mu.Unlock()
}

// uncork writes what was gathered since cork in one write and has later
// writes go straight to the connection. The buffer goes back to the pool.
func (w *batchWriter) uncork() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.corked = false
	if w.buf == nil {
		return nil
	}
	var err error
	if len(*w.buf) > 0 {
		_, err = w.conn.Write(*w.buf)
	}
	*w.buf = (*w.buf)[:0]
	w.pool.Put(w.buf)
	w.buf = nil
	return err
}

func (w *batchWriter) get() *[]byte {
	if b, ok := w.pool.Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, 0, batchBytes)
	return &b
}
