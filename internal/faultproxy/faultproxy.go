// Package faultproxy is a TCP proxy for tests that breaks the link between a
// program and its server on command: it cuts, freezes, slows and resets the
// connections it forwards, as a failing network or a restarting server
// would.
//
// A Proxy listens on a free loopback port and forwards every connection it
// accepts to its target. Its faults are:
//
//   - Cut: every connection is closed and new ones are closed as soon as
//     they are accepted, until Restore: a server that is gone.
//   - Freeze: the connections open now stop passing bytes in both
//     directions but stay open, as on a network that drops every packet;
//     new connections work. Restore thaws them.
//   - Slow: every chunk of bytes is held for a while before it is passed
//     on, in each direction, on the connections open now and later.
//   - Reset: the connections open now are reset (TCP RST on both sides);
//     new connections work.
//
// Close stops the proxy: it closes the listener and every connection and
// waits for every goroutine it started.
package faultproxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// dialTimeout bounds the dial of the target for one accepted connection.
const dialTimeout = 5 * time.Second

// Proxy forwards TCP connections to a target and breaks them on command. Its
// methods are safe for concurrent use.
type Proxy struct {
	target string
	ln     net.Listener
	wg     sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	cut     bool
	latency time.Duration
	conns   map[*link]struct{}
}

// link is one forwarded connection: the client's and the server's ends.
type link struct {
	client, server net.Conn

	mu     sync.Mutex
	frozen chan struct{} // non-nil while frozen; closed when thawed
	done   chan struct{} // closed when the link is closed
	once   sync.Once
}

// New returns a Proxy listening on a free port of 127.0.0.1 that forwards to
// target, a host:port.
func New(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen: %w", err)
	}
	p := &Proxy{target: target, ln: ln, conns: make(map[*link]struct{})}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr returns the host:port the proxy listens on.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Conns returns how many connections the proxy forwards now.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		p.mu.Lock()
		if p.closed || p.cut {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.wg.Add(1)
		p.mu.Unlock()
		go p.open(c)
	}
}

// open dials the target for client and forwards between them.
func (p *Proxy) open(client net.Conn) {
	defer p.wg.Done()
	server, err := net.DialTimeout("tcp", p.target, dialTimeout)
	if err != nil {
		client.Close()
		return
	}
	l := &link{client: client, server: server, done: make(chan struct{})}
	p.mu.Lock()
	if p.closed || p.cut {
		p.mu.Unlock()
		l.close()
		return
	}
	p.conns[l] = struct{}{}
	p.wg.Add(2)
	p.mu.Unlock()
	go p.pipe(l, client, server)
	go p.pipe(l, server, client)
}

// pipe copies from src to dst until either fails or the link is closed,
// holding each chunk while the link is frozen or the proxy slow.
func (p *Proxy) pipe(l *link, src, dst net.Conn) {
	defer p.wg.Done()
	defer p.drop(l)
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.hold(l) {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// hold waits while l is frozen, then for the proxy's latency. It reports
// whether the link is still open.
func (p *Proxy) hold(l *link) bool {
	for {
		l.mu.Lock()
		thawed := l.frozen
		l.mu.Unlock()
		if thawed == nil {
			break
		}
		select {
		case <-thawed:
		case <-l.done:
			return false
		}
	}
	p.mu.Lock()
	d := p.latency
	p.mu.Unlock()
	if d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-l.done:
			return false
		}
	}
	select {
	case <-l.done:
		return false
	default:
		return true
	}
}

// drop closes l and forgets it.
func (p *Proxy) drop(l *link) {
	l.close()
	p.mu.Lock()
	delete(p.conns, l)
	p.mu.Unlock()
}

func (l *link) close() {
	l.once.Do(func() {
		close(l.done)
		l.client.Close()
		l.server.Close()
	})
}

// reset closes both ends of l with a TCP RST.
func (l *link) reset() {
	for _, c := range []net.Conn{l.client, l.server} {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
	}
	l.close()
}

// links returns the connections open now.
func (p *Proxy) links() []*link {
	p.mu.Lock()
	defer p.mu.Unlock()
	ls := make([]*link, 0, len(p.conns))
	for l := range p.conns {
		ls = append(ls, l)
	}
	return ls
}

// Cut closes every connection and closes new ones as soon as they are
// accepted, until Restore.
func (p *Proxy) Cut() {
	p.mu.Lock()
	p.cut = true
	p.mu.Unlock()
	for _, l := range p.links() {
		l.close()
	}
}

// Freeze stops the connections open now from passing bytes, in both
// directions, until Restore; they stay open. Connections opened later are
// not frozen.
func (p *Proxy) Freeze() {
	for _, l := range p.links() {
		l.mu.Lock()
		if l.frozen == nil {
			l.frozen = make(chan struct{})
		}
		l.mu.Unlock()
	}
}

// Slow holds every chunk of bytes for d before passing it on, in each
// direction, until Restore or another Slow. 0 removes the delay.
func (p *Proxy) Slow(d time.Duration) {
	p.mu.Lock()
	p.latency = d
	p.mu.Unlock()
}

// Reset resets the connections open now: both their ends are closed with a
// TCP RST. New connections work.
func (p *Proxy) Reset() {
	for _, l := range p.links() {
		l.reset()
	}
}

// Restore ends every fault: new connections are forwarded again, frozen
// ones pass bytes again, and no delay is added.
func (p *Proxy) Restore() {
	p.mu.Lock()
	p.cut = false
	p.latency = 0
	p.mu.Unlock()
	for _, l := range p.links() {
		l.mu.Lock()
		if l.frozen != nil {
			close(l.frozen)
			l.frozen = nil
		}
		l.mu.Unlock()
	}
}

// Close stops listening, closes every connection and waits for the proxy's
// goroutines to end. It is idempotent.
func (p *Proxy) Close() error {
	p.mu.Lock()
	already := p.closed
	p.closed = true
	p.mu.Unlock()
	var err error
	if !already {
		if err = p.ln.Close(); errors.Is(err, net.ErrClosed) {
			err = nil
		}
	}
	for _, l := range p.links() {
		l.close()
	}
	p.wg.Wait()
	if err != nil {
		return fmt.Errorf("faultproxy: close: %w", err)
	}
	return nil
}

var _ io.Closer = (*Proxy)(nil)
