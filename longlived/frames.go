package longlived

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// ErrTooManyFrames is reported to Hooks.Error, wrapped with the limit that
// was crossed, when a peer sends more than MaxMessageFrames frames in one
// message, or more than FramesPerSecond continuation and control frames a
// second. The peer is then closed with 1008 Policy Violation.
var ErrTooManyFrames = errors.New("longlived: too many frames, peer closed")

// statusPolicy is the close status of a peer that crossed a frame limit.
const statusPolicy = 1008 // websocket.StatusPolicyViolation

// frameConn is the hijacked connection of a peer, seen by coder/websocket.
// It follows the frames of the byte stream as they are read, before the
// library parses them, for two purposes:
//
//   - It counts the data messages whose final frame arrived whole. A message
//     the library returns is complete only if frameConn has counted it:
//     coder/websocket v1.8.15 returns the part of a message it has read as
//     a complete message when the connection ends inside it.
//   - It bounds the frames in one message, and the frames a second besides
//     the first of each message, which the library does not: empty frames
//     cost no bytes of ReadLimit. Once a bound is crossed every Read fails
//     with ErrTooManyFrames.
//
// Reads are serialized by the library, and they happen before the read
// loop looks at complete, so the parse state needs no lock.
type frameConn struct {
	net.Conn
	pending []byte // bytes read ahead of the connection, read first

	maxMessage int    // frames in one message; <= 0 means no bound
	perSecond  bucket // continuation and control frames a second; off when its rate is 0
	pingBudget bucket // pings a second: each costs a pong written back
	pings      int    // pings that began in the bytes being observed

	head      [14]byte // the frame header being read
	headLen   int      // bytes of head read so far
	headNeed  int      // bytes the header has, once its second byte is read
	remaining uint64   // payload bytes of the current frame still to come
	fin       bool     // the current frame ends its message
	data      bool     // the current frame is a data frame
	frames    int      // frames of the message under way
	err       error    // the bound crossed, returned by every Read once set

	complete atomic.Int64 // data messages whose final frame arrived whole

	closeOnce sync.Once
	done      chan struct{} // closed by Close
}

// pingsPerSecond bounds the pings a peer sends, each of which the library
// answers with a write of its own: a client pings every few seconds, if at
// all. A peer that sends more is closed as for Handler.FramesPerSecond.
const pingsPerSecond = 50

func newFrameConn(c net.Conn, maxMessage, perSecond int) *frameConn {
	fc := &frameConn{Conn: c, maxMessage: maxMessage, done: make(chan struct{})}
	fc.pingBudget = newBucket(pingsPerSecond, pingsPerSecond)
	if perSecond > 0 {
		fc.perSecond = newBucket(float64(perSecond), float64(perSecond))
	}
	return fc
}

// Read implements net.Conn.
func (fc *frameConn) Read(p []byte) (int, error) {
	if fc.err != nil {
		return 0, fc.err
	}
	var n int
	var err error
	if len(fc.pending) > 0 {
		n = copy(p, fc.pending)
		if fc.pending = fc.pending[n:]; len(fc.pending) == 0 {
			fc.pending = nil
		}
	} else {
		n, err = fc.Conn.Read(p)
	}
	if n > 0 {
		if ferr := fc.observe(p[:n]); ferr != nil {
			return 0, ferr
		}
	}
	return n, err
}

// Close implements net.Conn. It also ends a wait of the read loop.
func (fc *frameConn) Close() error {
	fc.closeOnce.Do(func() { close(fc.done) })
	return fc.Conn.Close()
}

// messages returns the count of data messages whose final frame arrived
// whole.
func (fc *frameConn) messages() int64 { return fc.complete.Load() }

// observe follows the frames in b, the next bytes of the stream. It returns
// the error, also kept for later Reads, of a bound crossed.
func (fc *frameConn) observe(b []byte) error {
	extra := 0 // frames that began in b, besides the first of a message
	for len(b) > 0 {
		if fc.remaining > 0 {
			k := uint64(len(b))
			if k > fc.remaining {
				k = fc.remaining
			}
			b = b[k:]
			if fc.remaining -= k; fc.remaining == 0 {
				fc.frameDone()
			}
			continue
		}
		fc.head[fc.headLen] = b[0]
		fc.headLen++
		b = b[1:]
		if fc.headLen == 2 {
			fc.headNeed = 2 + 4*int(fc.head[1]>>7) // the masking key
			switch fc.head[1] & 0x7f {
			case 126:
				fc.headNeed += 2
			case 127:
				fc.headNeed += 8
			}
		}
		if fc.headLen < 2 || fc.headLen < fc.headNeed {
			continue
		}
		first, err := fc.header()
		if err != nil {
			fc.err = err
			return err
		}
		if !first {
			extra++
		}
	}
	if fc.pings > 0 {
		pings := fc.pings
		fc.pings = 0
		if fc.pingBudget.take(time.Now(), float64(pings)) > 0 {
			fc.err = fmt.Errorf("%w: more than %d pings a second", ErrTooManyFrames, pingsPerSecond)
			return fc.err
		}
	}
	if extra > 0 && fc.perSecond.rate > 0 && fc.perSecond.take(time.Now(), float64(extra)) > 0 {
		fc.err = fmt.Errorf("%w: more than %.0f continuation and control frames a second", ErrTooManyFrames, fc.perSecond.rate)
		return fc.err
	}
	return nil
}

// header starts the frame whose header is complete in head, and reports
// whether it is the first frame of a data message.
func (fc *frameConn) header() (first bool, err error) {
	h := fc.head[:fc.headLen]
	fc.headLen = 0
	fc.fin = h[0]&0x80 != 0
	fc.data = h[0]&0x08 == 0 // opcodes 0x0–0x7; 0x8–0xf are control frames
	if h[0]&0x0f == 0x9 {
		fc.pings++
	}
	switch n := h[1] & 0x7f; n {
	case 126:
		fc.remaining = uint64(binary.BigEndian.Uint16(h[2:]))
	case 127:
		fc.remaining = binary.BigEndian.Uint64(h[2:])
	default:
		fc.remaining = uint64(n)
	}
	if fc.data {
		fc.frames++
		if fc.maxMessage > 0 && fc.frames > fc.maxMessage {
			return false, fmt.Errorf("%w: more than %d frames in one message", ErrTooManyFrames, fc.maxMessage)
		}
		first = fc.frames == 1
	}
	if fc.remaining == 0 {
		fc.frameDone()
	}
	return first, nil
}

// frameDone ends the current frame, whose payload has arrived whole.
func (fc *frameConn) frameDone() {
	if fc.data && fc.fin {
		fc.frames = 0
		fc.complete.Add(1)
	}
}

// SetLinger sets SO_LINGER on the connection underneath, so that a dropped
// peer can be reset (see peer.abort).
func (c *frameConn) SetLinger(sec int) error {
	if l, ok := c.Conn.(lingerer); ok {
		return l.SetLinger(sec)
	}
	return errors.ErrUnsupported
}
