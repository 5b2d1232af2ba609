package main

import (
	"context"
	"fmt"
	"math/bits"
	"net/url"
	"sync"
	"sync/atomic"
	"time"
)

// Bounds of the clients.
const (
	probeInterval = 100 * time.Millisecond // between warm-up probes
	stallTimeout  = time.Second            // a full window waits this long, then sends anyway
	maxSeq        = 1 << 40                // a sequence number above is not ours
)

// topic is one chat room with its clients.
type topic struct {
	index    int
	room     string
	firstPub int // the global number of its first publisher
	subs     []*receiver
	pubs     []*publisher
}

// client is one WebSocket connection.
type client struct {
	url      string // with its query: room and user
	instance int
	conn     *wsConn
	err      error // connect error
}

// receiver is a subscribing client. Its reader goroutine alone writes seen
// and probed; the counters are atomic for the live progress.
type receiver struct {
	client
	topic      *topic
	hist       histogram    // from the instant each message was due
	fromSend   histogram    // from the instant each message was sent
	deliveries atomic.Int64 // distinct measured messages
	dups       atomic.Int64
	foreign    atomic.Int64 // messages that are not from the topic's publishers
	seen       [][]uint64   // per publisher of the topic: a bit per sequence number
	probed     []bool       // per publisher: a probe has arrived
	watch      []bool       // per publisher: this receiver moves its window
}

// publisher is a publishing client. It reads too: the chat relays the
// other publishers' messages of its room to it, which it discards.
type publisher struct {
	client
	id       int // global, the number in its messages
	topic    *topic
	sent     atomic.Int64 // measured messages handed to the socket
	acked    atomic.Int64 // the window's watcher has received every message below this
	wake     chan struct{}
	ready    atomic.Int64 // subscribers that received a probe
	readyCh  chan struct{}
	readyN   int64 // subscribers to wait for
	lag      histogram
	stalls   atomic.Int64
	received atomic.Int64 // other publishers' messages, discarded
	writeErr error
}

// dialer connects the clients, counting connect times.
type dialer struct {
	hist       histogram
	ok, failed atomic.Int64
	connected  atomic.Int64 // open now
	errMu      sync.Mutex
	firstErr   error
}

// dial connects c, recording the connect time or the error.
func (d *dialer) dial(ctx context.Context, c *client, readLimit int64) {
	start := time.Now()
	conn, err := dialWS(ctx, c.url, readLimit)
	if err != nil {
		c.err = err
		d.failed.Add(1)
		d.errMu.Lock()
		if d.firstErr == nil {
			d.firstErr = err
		}
		d.errMu.Unlock()
		return
	}
	d.hist.record(int64(time.Since(start)))
	c.conn = conn
	d.ok.Add(1)
	d.connected.Add(1)
}

// clientURL returns base with the room and user in its query.
func clientURL(base, room, user string) (string, error) {
	u, err := url.Parse(base)
	if err != nil {
		return "", err
	}
	q := u.Query()
	q.Set("room", room)
	q.Set("user", user)
	u.RawQuery = q.Encode()
	return u.String(), nil
}

// run reads until the connection ends; base is the run's clock.
func (r *receiver) run(base time.Time, bufSize int, ended func(error)) {
	buf := make([]byte, bufSize)
	npub := len(r.topic.pubs)
	r.seen = make([][]uint64, npub)
	r.probed = make([]bool, npub)
	for {
		n, fits, err := r.conn.readMessage(buf)
		if err != nil {
			ended(err)
			return
		}
		if !fits {
			r.foreign.Add(1)
			continue
		}
		r.deliver(buf[:n], int64(time.Since(base)))
	}
}

// deliver accounts for one message received at now (ns since the run's
// start).
func (r *receiver) deliver(b []byte, now int64) {
	h, err := parse(b)
	slot := h.publisher - r.topic.firstPub
	if err != nil || slot < 0 || slot >= len(r.topic.pubs) {
		r.foreign.Add(1)
		return
	}
	p := r.topic.pubs[slot]
	if h.kind == kindProbe {
		if !r.probed[slot] {
			r.probed[slot] = true
			if p.ready.Add(1) == p.readyN {
				close(p.readyCh)
			}
		}
		return
	}
	if h.seq >= p.sent.Load() || h.seq >= maxSeq {
		r.foreign.Add(1) // not sent yet: not from this publisher
		return
	}
	w := int(h.seq >> 6)
	bs := r.seen[slot]
	if w >= len(bs) {
		bs = append(bs, make([]uint64, max(w+1-len(bs), len(bs)))...)
		r.seen[slot] = bs
	}
	bit := uint64(1) << (h.seq & 63)
	if bs[w]&bit != 0 {
		r.dups.Add(1)
		return
	}
	bs[w] |= bit
	r.deliveries.Add(1)
	r.hist.record(now - h.due)
	r.fromSend.record(now - h.sent)
	if r.watch[slot] {
		if next := h.seq + 1; next > p.acked.Load() {
			p.acked.Store(next) // the watcher alone stores
		}
		select {
		case p.wake <- struct{}{}:
		default:
		}
	}
}

// missing returns how many of the first sent messages of publisher slot
// never arrived. Call it once the reader has ended.
func (r *receiver) missing(slot int, sent int64) int64 {
	var have int64
	full := int(sent >> 6)
	for w, word := range r.seen[slot] {
		switch {
		case w < full:
			have += int64(bits.OnesCount64(word))
		case w == full:
			have += int64(bits.OnesCount64(word & (1<<(sent&63) - 1)))
		}
	}
	return sent - have
}

// drainReads reads and discards what a publisher is sent.
func (p *publisher) drainReads(bufSize int, ended func(error)) {
	buf := make([]byte, bufSize)
	for {
		if _, _, err := p.conn.readMessage(buf); err != nil {
			ended(err)
			return
		}
		p.received.Add(1)
	}
}

// probe sends warm-up probes until every subscriber of the topic has
// received one, or ctx is done.
func (p *publisher) probe(ctx context.Context, size int) error {
	if p.readyN == 0 {
		return nil
	}
	buf := newPayload(size)
	ticker := time.NewTicker(probeInterval)
	defer ticker.Stop()
	for seq := int64(0); ; seq++ {
		put(buf, header{kind: kindProbe, publisher: p.id, seq: seq})
		if err := p.conn.writeText(buf); err != nil {
			return fmt.Errorf("publisher %d: warm-up: %w", p.id, err)
		}
		select {
		case <-p.readyCh:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-ticker.C:
		}
	}
}

// publishOpen publishes one message every interval from start+offset until
// end (all on the run's clock, base), open loop: each message carries the
// instant it was due, so that a late send shows as latency.
func (p *publisher) publishOpen(ctx context.Context, base time.Time, size int, start, end, offset time.Duration, interval float64) {
	buf := newPayload(size)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for seq := int64(0); ; seq++ {
		due := start + offset + time.Duration(float64(seq)*interval)
		if due >= end {
			return
		}
		if wait := due - time.Since(base); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-ctx.Done():
				return
			}
		}
		if !p.send(buf, seq, due, base) {
			return
		}
	}
}

// publishWindow publishes as fast as a window of messages in flight
// allows until end: a message is in flight until the publisher's watcher
// (one subscriber of the topic, on another instance where there is one)
// has received it or a later one. A window full for stallTimeout sends one
// more anyway, so that lost messages never stop the publisher.
func (p *publisher) publishWindow(ctx context.Context, base time.Time, size int, end time.Duration, window int64) {
	buf := newPayload(size)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for seq := int64(0); ; seq++ {
		for seq-p.acked.Load() >= window {
			left := end - time.Since(base)
			if left <= 0 {
				return
			}
			timer.Reset(min(stallTimeout, left))
			select {
			case <-p.wake:
				continue
			case <-timer.C:
			case <-ctx.Done():
				return
			}
			if time.Since(base) >= end {
				return
			}
			p.stalls.Add(1)
			break
		}
		now := time.Since(base)
		if now >= end {
			return
		}
		if !p.send(buf, seq, now, base) {
			return
		}
	}
}

// send writes message seq, due at due; it reports false when the
// connection failed.
func (p *publisher) send(buf []byte, seq int64, due time.Duration, base time.Time) bool {
	now := time.Since(base)
	put(buf, header{kind: kindLoad, publisher: p.id, seq: seq, due: int64(due), sent: int64(now)})
	p.sent.Add(1) // before the write: a receiver may see it before Write returns
	p.lag.record(int64(now - due))
	if err := p.conn.writeText(buf); err != nil {
		p.writeErr = err
		return false
	}
	return true
}
