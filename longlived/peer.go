package longlived

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/edgesync/edgesync/edge"
)

// closeHandshakeTimeout bounds how long the close handshake may read what a
// client still sends before its close frame.
const closeHandshakeTimeout = 5 * time.Second

// queueOverhead is what one queued message costs besides its payload, in the
// accounting of WriteQueueBytes: its entry in the queue (40 bytes on 64-bit
// platforms), rounded up.
const queueOverhead = 48

// Close statuses the handler sends, besides StatusSlowConsumer.
const (
	statusGoingAway      = int(websocket.StatusGoingAway)
	statusInvalidPayload = int(websocket.StatusInvalidFramePayloadData)
	statusTooBig         = int(websocket.StatusMessageTooBig)
	statusInternalError  = int(websocket.StatusInternalError)
	statusAbnormal       = int(websocket.StatusAbnormalClosure)
)

// errStopped ends the read loop when the handler itself has decided to close
// the peer, with a close handshake still to make.
var errStopped = errors.New("longlived: read loop stopped")

// errIncomplete ends the read loop when the connection ended inside a
// message.
var errIncomplete = errors.New("longlived: connection ended inside a message")

// peer is one WebSocket connection held in memory: an edge.Peer for the
// hooks and an edge.Endpoint for the Hub.
type peer struct {
	h         *Handler
	id        string
	namespace string
	attrs     map[string]string
	member    *edge.Member
	conn      *websocket.Conn
	raw       net.Conn     // the hijacked connection, closed to drop the peer
	out       *batchWriter // what coder/websocket writes goes through it

	frames *frameConn    // raw, which follows the frames the library reads
	in     inbound       // paces the read loop
	reads  atomic.Uint64 // messages the read loop has taken in, for the pinger
	pacing atomic.Bool   // the read loop is waiting for the inbound limits

	wg sync.WaitGroup // the writer, pinger and reporter goroutines

	start time.Time // queue entries are timed from it, on the monotonic clock

	mu        sync.Mutex
	queue     []entry
	queued    int           // bytes of the queue and of the batch being written
	inflight  bool          // a batch of messages is being written
	sentAt    time.Duration // when the oldest message of that batch was queued
	evicted   bool          // a slow consumer: the write deadline is final
	writing   bool          // a writer goroutine runs, or has made the close handshake
	closing   bool          // nothing more is queued
	aborted   bool          // the connection was dropped without a close frame
	ended     bool          // the read loop has finished: no goroutine starts any more
	code      int           // the close status the server chose, 0 if none
	reason    string        // its reason
	heartbeat *time.Timer   // nil when pings are disabled
}

// entry is one queued message and when it was queued.
type entry struct {
	d  edge.Data
	at time.Duration // since the peer's start
}

// ID implements edge.Peer.
func (p *peer) ID() string { return p.id }

// Namespace implements edge.Peer.
func (p *peer) Namespace() string { return p.namespace }

// Attr implements edge.Peer.
func (p *peer) Attr(key string) string { return p.attrs[key] }

// Send implements edge.Peer. It queues d and returns: ErrPeerClosed once the
// peer is closing, ErrSlowConsumer if the peer turned out to be a slow
// consumer, which closes it, ErrMessageTooLarge if d could never fit in its
// queue.
func (p *peer) Send(ctx context.Context, d edge.Data) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !d.Valid() {
		return fmt.Errorf("longlived: send: %w", edge.ErrInvalidText)
	}
	return p.enqueue(d)
}

// Publish implements edge.Peer.
func (p *peer) Publish(ctx context.Context, topic string, d edge.Data) error {
	return p.member.Publish(ctx, topic, d)
}

// Subscribe implements edge.Peer.
func (p *peer) Subscribe(ctx context.Context, topic string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return p.member.Subscribe(topic)
}

// Unsubscribe implements edge.Peer.
func (p *peer) Unsubscribe(ctx context.Context, topic string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return p.member.Unsubscribe(topic)
}

// Topics implements edge.Peer.
func (p *peer) Topics(ctx context.Context) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return p.member.Topics(), nil
}

// Close implements edge.Peer and edge.Endpoint. It returns at once: the
// writer sends what is queued, then the close frame. Closing a closing peer
// does nothing.
func (p *peer) Close(code int, reason string) error {
	if !validCloseStatus(code) {
		return fmt.Errorf("longlived: close status %d cannot be sent", code)
	}
	if len(reason) > 123 {
		return fmt.Errorf("longlived: close reason is %d bytes long, more than 123", len(reason))
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closeLocked(code, reason, false)
	return nil
}

// validCloseStatus reports whether code may be sent in a close frame.
func validCloseStatus(code int) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1014:
		return true
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
}

// Deliver implements edge.Endpoint: it queues d without blocking. A closing
// peer drops it.
func (p *peer) Deliver(d edge.Data) { _ = p.enqueue(d) }

// enqueue appends d to the write queue, unless the peer is a slow consumer:
// then it evicts the peer. See the package documentation for the policy.
func (p *peer) enqueue(d edge.Data) error {
	size := len(d.Bytes) + queueOverhead
	now := time.Since(p.start)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing {
		return ErrPeerClosed
	}
	limit := p.h.writeQueueBytes()
	if size > limit {
		// No reader could be fast enough for it: the message is at
		// fault, not the peer.
		err := fmt.Errorf("%w: %d bytes", ErrMessageTooLarge, len(d.Bytes))
		p.goLocked(func() { p.report(err) })
		return err
	}
	if lag := p.lagLocked(now); p.queued+size > limit || lag > p.h.maxWriteLag() {
		err := fmt.Errorf("%w: %v behind, %d bytes queued", ErrSlowConsumer, lag.Round(time.Millisecond), p.queued)
		p.evictLocked(err)
		return err
	}
	p.queue = append(p.queue, entry{d: d, at: now})
	p.queued += size
	p.startWriterLocked()
	return nil
}

// lagLocked returns how long the oldest message not yet written, if any,
// has waited at time now.
func (p *peer) lagLocked(now time.Duration) time.Duration {
	switch {
	case p.inflight:
		return now - p.sentAt
	case len(p.queue) > 0:
		return now - p.queue[0].at
	}
	return 0
}

// evictLocked closes a slow consumer, to be reported with err. Its queue is
// dropped at once; the write in progress, if any, and the close frame get
// WriteTimeout from now before the connection is dropped. The peer leaves
// the Hub, so that publishers stop visiting it, and is reported to
// Hooks.Error, both from a goroutine of its own: the caller may be the Hub
// fanning out, which must not be re-entered.
func (p *peer) evictLocked(err error) {
	p.closeLocked(StatusSlowConsumer, "slow consumer", true)
	// The write in progress may be stuck on a full socket. The writer
	// leaves this deadline in place, so it bounds the close frame too.
	p.evicted = true
	_ = p.raw.SetWriteDeadline(time.Now().Add(p.h.writeTimeout()))
	member := p.member
	p.goLocked(func() {
		if member != nil {
			member.Leave()
		}
		p.report(err)
	})
}

// closeLocked marks the peer closing with code and has the writer send the
// close frame, after the queue unless drop. The first close wins.
func (p *peer) closeLocked(code int, reason string, drop bool) {
	if p.closing {
		return
	}
	p.closing = true
	p.code, p.reason = code, reason
	if drop {
		p.dropQueueLocked()
	}
	p.startWriterLocked()
}

func (p *peer) dropQueueLocked() {
	clear(p.queue)
	p.queue = nil
}

func (p *peer) startWriterLocked() {
	if !p.writing && !p.ended {
		p.writing = true
		p.wg.Add(1) // see goLocked
		go p.writeLoop()
	}
}

// goLocked runs fn on a goroutine that the read goroutine waits for before
// it reports the close. p.mu is held and the read loop has not ended, so the
// WaitGroup's Add happens before its Wait.
func (p *peer) goLocked(fn func()) {
	if p.ended {
		return
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		fn()
	}()
}

// writeLoop writes the queue until it is empty, in batches: every message
// queued when it looks, up to batchBytes, goes out in one write to the
// connection. Then, if the peer is closing, it makes the close handshake.
func (p *peer) writeLoop() {
	defer p.wg.Done()
	var batch []entry
	for {
		p.mu.Lock()
		if len(p.queue) == 0 {
			if p.closing && p.code != 0 && !p.aborted {
				code, reason, evicted := p.code, p.reason, p.evicted
				p.mu.Unlock()
				if evicted {
					// What an evicted peer has not read by the
					// end of the handshake is discarded (a TCP
					// reset), not left to the kernel to hold.
					p.setLinger0()
				}
				// Close is made once: writing stays true, so no
				// writer starts again.
				_ = p.conn.Close(websocket.StatusCode(code), reason)
				return
			}
			p.writing = false
			p.mu.Unlock()
			return
		}
		// A deadline on the connection bounds the batch: unlike a
		// context with a timeout, it costs no allocation per message.
		// It is set and cleared under p.mu, so that the deadline an
		// eviction sets, which bounds the close frame too, stays. A
		// connection without deadlines gets a context per message,
		// and its messages one at a time.
		deadline := p.raw.SetWriteDeadline(time.Now().Add(p.h.writeTimeout())) == nil
		n, size := 0, 0
		for _, e := range p.queue {
			s := len(e.d.Bytes) + queueOverhead
			if n > 0 && (!deadline || size+s > batchBytes) {
				break
			}
			n, size = n+1, size+s
		}
		if n == len(p.queue) {
			// The whole queue: the batch's array, emptied, becomes
			// the queue, so that neither grows again.
			batch, p.queue = p.queue, batch[:0]
		} else {
			batch = append(batch[:0], p.queue[:n]...)
			clear(p.queue[:n])
			p.queue = p.queue[n:]
		}
		p.inflight, p.sentAt = true, batch[0].at
		p.mu.Unlock()

		err := p.writeBatch(batch, deadline)
		clear(batch) // let the payloads go

		p.mu.Lock()
		p.inflight = false
		if deadline && !p.evicted {
			// coder/websocket's reader writes pongs on the same
			// connection.
			_ = p.raw.SetWriteDeadline(time.Time{})
		}
		p.queued -= size
		if err == nil {
			if len(p.queue) == 0 {
				p.queue = nil // an idle peer holds no array
			}
			p.mu.Unlock()
			continue
		}
		if errors.Is(err, net.ErrClosed) || p.ended {
			// The connection has ended; the read loop reports why.
			p.closing = true
			p.dropQueueLocked()
			p.mu.Unlock()
			return
		}
		known := p.closing // a slow consumer, or a close already under way
		p.mu.Unlock()
		if known {
			err = nil
		}
		p.abort("write failed", err)
		return
	}
}

// writeBatch writes the messages of batch, gathered into one write to the
// connection when it has deadlines (see batchWriter and its writeMessage).
func (p *peer) writeBatch(batch []entry, deadline bool) error {
	if !deadline {
		return p.write(batch[0].d, false)
	}
	p.out.cork()
	var err error
	for _, e := range batch {
		err = p.out.writeMessage(e.d.Binary, e.d.Bytes)
		if errors.Is(err, errUnfollowed) {
			err = p.write(e.d, true)
		} else if err != nil {
			err = fmt.Errorf("longlived: write: %w", err)
		}
		if err != nil {
			break
		}
	}
	if uerr := p.out.uncork(); uerr != nil && err == nil {
		err = fmt.Errorf("longlived: write: %w", uerr)
	}
	return err
}

// write writes one message, bounded by the write deadline already set on
// the connection, or by WriteTimeout if it has no deadlines.
func (p *peer) write(d edge.Data, deadline bool) error {
	typ := websocket.MessageText
	if d.Binary {
		typ = websocket.MessageBinary
	}
	var err error
	if deadline {
		err = p.conn.Write(context.Background(), typ, d.Bytes)
	} else { // a connection without deadlines
		ctx, cancel := context.WithTimeout(context.Background(), p.h.writeTimeout())
		err = p.conn.Write(ctx, typ, d.Bytes)
		cancel()
	}
	if err != nil {
		return fmt.Errorf("longlived: write: %w", err)
	}
	return nil
}

// lingerer is a connection that can discard what it has not sent when it
// is closed, as *net.TCPConn can.
type lingerer interface{ SetLinger(sec int) error }

// abort drops the connection without a close frame, reporting cause unless
// it is nil. The close status already chosen, if any, is kept.
func (p *peer) abort(reason string, cause error) {
	p.mu.Lock()
	if !p.closing {
		p.code, p.reason = statusAbnormal, reason
	}
	p.closing, p.aborted = true, true
	p.dropQueueLocked()
	ended := p.ended
	p.mu.Unlock()
	if cause != nil && !ended {
		p.report(cause)
	}
	// What the peer has not read is of no use to anyone: discard it at
	// once (the client gets a TCP reset) instead of leaving the kernel to
	// hold it, possibly for minutes, for a client that does not read.
	p.setLinger0()
	_ = p.raw.Close()
}

// setLinger0 has the connection reset, discarding what it has not sent,
// when it is closed.
func (p *peer) setLinger0() {
	if l, ok := p.raw.(lingerer); ok {
		_ = l.SetLinger(0)
	}
}

// drop drops the connection at once, keeping the close status already chosen.
func (p *peer) drop() { p.abort("going away", nil) }

// startHeartbeat arms the ping timer when pings are enabled.
func (p *peer) startHeartbeat() {
	interval := p.h.PingInterval
	if interval <= 0 {
		return
	}
	p.mu.Lock()
	p.heartbeat = time.AfterFunc(interval, p.ping)
	p.mu.Unlock()
}

// ping runs on the timer's goroutine: it pings the peer and drops it if no
// pong comes back within PingTimeout.
func (p *peer) ping() {
	p.mu.Lock()
	if p.closing || p.ended {
		p.mu.Unlock()
		return
	}
	p.wg.Add(1)
	p.mu.Unlock()
	defer p.wg.Done()

	before := p.reads.Load()
	ctx, cancel := context.WithTimeout(context.Background(), p.h.pingTimeout())
	err := p.conn.Ping(ctx)
	cancel()
	switch {
	case errors.Is(err, net.ErrClosed):
		return // the read loop sees why
	case errors.Is(err, context.DeadlineExceeded) && (p.reads.Load() > before || p.pacing.Load()):
		// No pong yet, but the read loop is taking in what the peer
		// sent, or waiting to at the pace of the inbound limits: its
		// pong is queued behind that. It is judged again once that is
		// read.
	case err != nil:
		p.abort("ping timeout", fmt.Errorf("%w: %w", ErrPingTimeout, err))
		return
	}
	p.mu.Lock()
	if !p.closing && !p.ended {
		p.heartbeat.Reset(p.h.PingInterval)
	}
	p.mu.Unlock()
}

// serve runs the connection, on a goroutine of its own, until it ends, then
// leaves the Hub and calls Hooks.Close.
func (p *peer) serve() {
	defer p.h.untrack(p)
	p.startHeartbeat()
	err := errStopped
	if p.h.runner().Open(p) {
		err = p.readLoop()
	}
	p.member.Leave()
	code, reason := p.finish(err)
	p.h.runner().Close(p, code, reason)
}

// readLoop reads messages and hands them to Hooks.Message until the
// connection fails or the handler decides to close it (errStopped).
// Messages that arrive once the peer is closing are discarded.
//
// The hooks' panics are the HookRunner's. A panic below the loop, in what
// reads the connection, ends this connection alone, as a failure: it is
// reported to Hooks.Error as an *edge.PanicError, and the connection is
// dropped, as net/http drops the connection of a handler that panics.
func (p *peer) readLoop() (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = &edge.PanicError{Value: v, Stack: debug.Stack()}
			p.report(fmt.Errorf("longlived: reading from the connection: %w", err))
		}
	}()
	ctx := context.Background()
	defer p.in.stop()
	var read int64 // messages coder/websocket has returned
	for {
		typ, b, err := p.conn.Read(ctx)
		if err != nil {
			if errors.Is(err, ErrTooManyFrames) {
				p.report(err)
				_ = p.Close(statusPolicy, "too many frames")
				return errStopped
			}
			return err
		}
		p.reads.Add(1)
		if read++; read > p.frames.messages() {
			// The connection ended inside this message, and
			// coder/websocket returned what it had of it: the peer
			// is dropped, the message is not delivered.
			return errIncomplete
		}
		p.pacing.Store(true)
		p.in.wait(len(b), p.frames.done)
		p.pacing.Store(false)
		if p.isClosing() {
			continue // checked after the wait, which a close cuts short
		}
		d := edge.Data{Bytes: b, Binary: typ == websocket.MessageBinary}
		if !d.Valid() {
			_ = p.Close(statusInvalidPayload, "text message is not valid UTF-8")
			return errStopped
		}
		if !p.h.runner().Message(p, d) {
			return errStopped
		}
	}
}

func (p *peer) isClosing() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closing
}

// finish ends the connection after the read loop returned err, waits for
// the peer's goroutines and returns the close status and reason to report.
func (p *peer) finish(err error) (code int, reason string) {
	handshake := errors.Is(err, errStopped)
	if errors.Is(err, websocket.ErrMessageTooBig) {
		// coder/websocket has sent the close frame; make the handshake.
		_ = p.Close(statusTooBig, "message too big")
		handshake = true
	}

	p.mu.Lock()
	p.closing = true
	p.dropQueueLocked()
	p.ended = true
	code, reason = p.code, p.reason
	p.mu.Unlock()

	if handshake {
		// The close handshake reads what the client still sends until
		// its close frame comes: a client that announced a long frame,
		// or that keeps sending, must not hold it open.
		_ = p.raw.SetReadDeadline(time.Now().Add(closeHandshakeTimeout))
	} else {
		// The client closed, or the connection failed: nothing more can
		// be said. Closing the socket unblocks a writer and a pinger.
		_ = p.raw.Close()
	}
	if p.heartbeat != nil {
		p.heartbeat.Stop()
	}
	p.wg.Wait()
	_ = p.conn.CloseNow() // releases coder/websocket's buffers

	if code != 0 {
		return code, reason
	}
	var ce websocket.CloseError
	if errors.As(err, &ce) {
		return int(ce.Code), ce.Reason
	}
	return statusAbnormal, ""
}

// report hands err to Hooks.Error, or logs it if there is none or it panics.
func (p *peer) report(err error) { p.h.runner().Error(p, err) }
