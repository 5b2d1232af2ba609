package clustersync

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"sync"
	"time"
)

// greeting is what the relay sends a client once it has registered its
// connection: from then on the client receives every frame.
const greeting = "clustersync/1\n"

// maxChunk bounds how many bytes of whole frames, already read, the relay
// forwards as one piece.
const maxChunk = 64 << 10

// Relay is a relay run on its own, by a supervisor process, rather than by
// whichever driver takes the role first. While it serves, drivers connect to
// it; when it stops, a driver takes the role over unless its Options.NoRelay
// is set.
type Relay struct {
	// Socket is the path of the Unix socket to listen on. It is required.
	// The lock file is Socket + ".lock".
	Socket string

	// MaxMessageBytes bounds one frame: a client that sends a larger one is
	// disconnected. 0 means DefaultMaxMessageBytes.
	MaxMessageBytes int

	// MaxQueueBytes bounds what is queued for one client: a client that
	// falls that far behind is disconnected. 0 means DefaultMaxQueueBytes,
	// or four times MaxMessageBytes if that is more.
	MaxQueueBytes int

	// OnError, if set, is told why a client was disconnected (a frame
	// too large or malformed, a client too slow), of errors accepting
	// connections, and of what happened to the socket and lock files (see
	// the package documentation). It must not block.
	OnError func(err error)
}

// Serve takes the relay role for r.Socket and relays between the clients
// that connect until ctx is done; then it disconnects them, removes the
// socket, releases the lock and returns nil. When another relay holds the
// lock it returns an error wrapping ErrRelayActive at once.
//
// While it serves, it checks every second that its socket and lock file are
// still in place, and listens again on a socket that was removed (see the
// package documentation, "Socket and lock files"). When its lock file was
// replaced and another relay holds the new one, it steps down: it
// disconnects its clients, which connect to the other relay, and returns an
// error wrapping ErrRelayActive.
func (r *Relay) Serve(ctx context.Context) error {
	if err := validateSocket(r.Socket); err != nil {
		return err
	}
	if err := validateLimits(r.MaxMessageBytes, r.MaxQueueBytes); err != nil {
		return err
	}
	maxMsg := orDefault(r.MaxMessageBytes, DefaultMaxMessageBytes)
	s, err := listen(r.Socket, maxMsg, queueLimit(r.MaxQueueBytes, maxMsg), r.OnError, r.OnError)
	if err != nil {
		return err
	}
	select {
	case <-ctx.Done():
	case <-s.lost:
	}
	err = s.close()
	select {
	case <-s.lost:
		return s.lostErr
	default:
		return err
	}
}

// checkInterval is how often a relay checks that its socket and its lock
// file are still in place: three stat calls.
const checkInterval = time.Second

// server is a running relay: the lock, the listener and the connections of
// its clients.
type server struct {
	path     string // of the socket
	lockPath string
	maxMsg   int
	maxQueue int
	onError  func(error)   // why a client was disconnected, accept errors
	onSocket func(error)   // what happened to the socket and lock files
	done     chan struct{} // closed when the relay stops
	lost     chan struct{} // closed, before done, when another relay took over
	lostErr  error         // why, set before lost is closed
	watched  chan struct{} // closed when watch returns

	closeOnce sync.Once
	closeErr  error

	// The files, which watch checks and shutdown releases.
	fileMu  sync.Mutex
	lock    *os.File          // the flock that elects this relay
	ln      *net.UnixListener // the listener of the socket
	bound   fs.FileInfo       // the socket file ln listens on
	problem string            // the trouble reported last, reported once

	mu     sync.RWMutex
	closed bool
	conns  map[*client]struct{}

	wg sync.WaitGroup // accept and client loops
}

// listen takes the lock of socket and listens on it. It returns an error
// wrapping ErrRelayActive when another relay holds the lock.
func listen(socket string, maxMsg, maxQueue int, onError, onSocket func(error)) (*server, error) {
	lock, err := tryLock(socket + ".lock")
	if err != nil {
		return nil, err
	}
	// The lock is ours: a socket file left there is stale.
	if err := removeStale(socket); err != nil {
		lock.Close()
		return nil, err
	}
	ln, bound, err := bind(socket)
	if err != nil {
		lock.Close()
		return nil, err
	}
	s := &server{
		path:     socket,
		lockPath: socket + ".lock",
		maxMsg:   maxMsg,
		maxQueue: maxQueue,
		onError:  onError,
		onSocket: onSocket,
		done:     make(chan struct{}),
		lost:     make(chan struct{}),
		watched:  make(chan struct{}),
		lock:     lock,
		ln:       ln,
		bound:    bound,
		conns:    make(map[*client]struct{}),
	}
	s.wg.Add(1)
	go s.accept(ln)
	go s.watch()
	return s, nil
}

// bind listens on the socket at path and returns the identity of the socket
// file. The listener does not remove the file when it is closed: the relay
// removes it itself, and only while it is still the one it bound.
func bind(path string) (*net.UnixListener, fs.FileInfo, error) {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, nil, fmt.Errorf("clustersync: listen: %w", err)
	}
	ln.SetUnlinkOnClose(false)
	fi, err := os.Lstat(path)
	if err != nil {
		ln.Close()
		return nil, nil, fmt.Errorf("clustersync: listen: %w", err)
	}
	return ln, fi, nil
}

// removeStale removes the socket file that a dead relay left at path.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("clustersync: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("clustersync: %s exists and is not a socket", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("clustersync: remove stale socket: %w", err)
	}
	return nil
}

// stopped reports whether the relay has stopped, or is stopping.
func (s *server) stopped() bool {
	select {
	case <-s.done:
		return true
	case <-s.lost:
		return true
	default:
		return false
	}
}

// watch checks the socket and lock files every checkInterval until the relay
// stops, and stops it when another relay has taken over.
func (s *server) watch() {
	defer close(s.watched)
	tick := time.NewTicker(checkInterval)
	defer tick.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-tick.C:
		}
		if err := s.check(); err != nil {
			s.lostErr = err
			close(s.lost)
			s.reportSocket(err)
			// close waits for watch to return.
			go s.close()
			return
		}
	}
}

// check makes sure that new clients still find the relay: that the lock file
// at its path is the one the relay holds, and the socket at its path the one
// it listens on. It listens again on a socket that was removed, and takes
// the lock again when its lock file was removed or replaced. It returns an
// error wrapping ErrRelayActive when another relay holds the lock of the
// file now at the path: the relay must step down.
func (s *server) check() error {
	s.fileMu.Lock()
	defer s.fileMu.Unlock()
	if s.stopped() {
		return nil
	}
	relocked, err := s.checkLock()
	if err != nil {
		return err
	}

	fi, err := os.Lstat(s.path)
	switch {
	case err == nil && os.SameFile(fi, s.bound):
		s.problem = ""
		return nil
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		s.trouble(fmt.Errorf("clustersync: relay: check socket %s: %w", s.path, err))
		return nil
	case err == nil && (!relocked || fi.Mode().Type() != fs.ModeSocket):
		// Someone else put this file there while the relay held the
		// lock: it is not the relay's to remove.
		s.trouble(fmt.Errorf("clustersync: relay: socket %s was replaced by a file that is not the relay's; new instances cannot connect until it is removed", s.path))
		return nil
	case err == nil:
		// A socket bound while the lock file was gone, by a relay that
		// no longer holds its lock: stale, as at startup.
		if err := removeStale(s.path); err != nil {
			s.trouble(err)
			return nil
		}
	}
	ln, bound, err := bind(s.path)
	if err != nil {
		s.trouble(fmt.Errorf("clustersync: relay: socket %s is gone and cannot be made again: %w", s.path, err))
		return nil
	}
	old := s.ln
	s.ln, s.bound, s.problem = ln, bound, ""
	s.mu.Lock()
	if !s.closed {
		s.wg.Add(1)
		go s.accept(ln)
	}
	s.mu.Unlock()
	old.Close() // its file is gone: no client can reach it any more
	s.reportSocket(fmt.Errorf("clustersync: relay: socket %s was removed or replaced; listening on it again", s.path))
	return nil
}

// checkLock makes sure that the relay holds the lock of the file at
// lockPath, taking it again when the file was removed or replaced and no
// other relay holds it. It reports whether it took the lock again, and
// returns an error wrapping ErrRelayActive when another relay holds it.
func (s *server) checkLock() (relocked bool, err error) {
	held, err := s.lock.Stat()
	if err == nil {
		var cur fs.FileInfo
		if cur, err = os.Stat(s.lockPath); err == nil && os.SameFile(held, cur) {
			return false, nil
		}
	}
	lock, err := tryLock(s.lockPath)
	if errors.Is(err, ErrRelayActive) {
		return false, fmt.Errorf("clustersync: relay: lock file %s was replaced, and another relay holds the new one: stepping down: %w", s.lockPath, err)
	}
	if err == nil {
		// Another process may have replaced the file between open and
		// flock: the lock counts only on the file still at the path.
		held, err1 := lock.Stat()
		cur, err2 := os.Stat(s.lockPath)
		if err1 != nil || err2 != nil || !os.SameFile(held, cur) {
			lock.Close()
			err = errors.New("the file changed while it was locked")
		}
	}
	if err != nil {
		s.trouble(fmt.Errorf("clustersync: relay: lock file %s was removed or replaced, and cannot be locked again: %w", s.lockPath, err))
		return false, nil
	}
	s.lock.Close()
	s.lock = lock
	s.reportSocket(fmt.Errorf("clustersync: relay: lock file %s was removed or replaced; locked it again", s.lockPath))
	return true, nil
}

// trouble reports err, unless it is the trouble reported last.
func (s *server) trouble(err error) {
	if msg := err.Error(); msg != s.problem {
		s.problem = msg
		s.reportSocket(err)
	}
}

func (s *server) reportSocket(err error) {
	if s.onSocket != nil {
		s.onSocket(err)
	}
}

func (s *server) report(err error) {
	if s.onError != nil {
		s.onError(err)
	}
}

// accept registers every connection until ln is closed.
func (s *server) accept(ln *net.UnixListener) {
	defer s.wg.Done()
	var delay time.Duration
	for {
		conn, err := ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || s.stopped() {
				return
			}
			// Out of file descriptors, most likely: wait and try again.
			s.report(fmt.Errorf("clustersync: relay: accept: %w", err))
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			t := time.NewTimer(delay)
			select {
			case <-s.done:
				t.Stop()
				return
			case <-t.C:
			}
			continue
		}
		delay = 0
		s.add(conn)
	}
}

// add registers a client and greets it, so that it knows it receives
// every frame sent from now on.
func (s *server) add(conn *net.UnixConn) {
	c := &client{
		s:      s,
		conn:   conn,
		wake:   make(chan struct{}, 1),
		done:   make(chan struct{}),
		queue:  [][]byte{[]byte(greeting)},
		queued: len(greeting),
	}
	c.wake <- struct{}{}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		conn.Close()
		return
	}
	s.conns[c] = struct{}{}
	s.wg.Add(2)
	s.mu.Unlock()
	go c.readLoop()
	go c.writeLoop()
}

func (s *server) remove(c *client) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// broadcast queues chunk, one or more whole frames, for every client but
// from. It never blocks on a client.
func (s *server) broadcast(from *client, chunk []byte) {
	s.mu.RLock()
	for c := range s.conns {
		if c != from {
			c.enqueue(chunk)
		}
	}
	s.mu.RUnlock()
}

// close disconnects every client, removes the socket, if it is still the
// relay's, and releases the lock. It returns once all that is done, however
// many times it is called.
func (s *server) close() error {
	s.closeOnce.Do(func() { s.closeErr = s.shutdown() })
	return s.closeErr
}

func (s *server) shutdown() error {
	s.mu.Lock()
	s.closed = true
	conns := make([]*client, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	close(s.done)

	s.fileMu.Lock()
	err := s.ln.Close()
	s.fileMu.Unlock()
	for _, c := range conns {
		c.close(nil)
	}
	s.wg.Wait()
	<-s.watched

	// Remove the socket before the lock is released, and only while it is
	// the one the relay bound: another relay's, or another file, stays.
	if fi, lerr := os.Lstat(s.path); lerr == nil && os.SameFile(fi, s.bound) {
		if rerr := os.Remove(s.path); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) && err == nil {
			err = rerr
		}
	}
	if lerr := s.lock.Close(); err == nil && lerr != nil {
		err = lerr
	}
	if err != nil {
		return fmt.Errorf("clustersync: close relay: %w", err)
	}
	return nil
}

// client is the relay's side of one connection.
type client struct {
	s    *server
	conn *net.UnixConn
	wake chan struct{} // signalled when the queue has something
	done chan struct{} // closed by close

	mu     sync.Mutex
	closed bool
	queue  [][]byte // chunks to write, shared with the other clients' queues
	queued int      // bytes queued or being written
}

// enqueue queues chunk for the client, or disconnects it when its queue
// would exceed the limit.
func (c *client) enqueue(chunk []byte) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	if c.queued+len(chunk) > c.s.maxQueue {
		queued := c.queued
		c.mu.Unlock()
		c.close(fmt.Errorf("clustersync: relay: disconnected a client too slow to read (%d bytes queued, limit %d)", queued, c.s.maxQueue))
		return
	}
	c.queue = append(c.queue, chunk)
	c.queued += len(chunk)
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// close disconnects the client, reporting why if reason is not nil.
func (c *client) close(reason error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	c.queue = nil
	c.mu.Unlock()
	close(c.done)
	c.conn.Close()
	if reason != nil {
		c.s.report(reason)
	}
}

// writeLoop writes what is queued, everything at once, until the client is
// closed.
func (c *client) writeLoop() {
	defer c.s.wg.Done()
	var spare [][]byte
	for {
		select {
		case <-c.done:
			return
		case <-c.wake:
		}
		c.mu.Lock()
		batch := c.queue
		if len(batch) == 0 {
			c.mu.Unlock()
			continue
		}
		c.queue = spare[:0] // spare is never batch: the two arrays alternate
		c.mu.Unlock()
		n := 0
		for _, b := range batch {
			n += len(b)
		}
		bufs := net.Buffers(batch)
		_, err := bufs.WriteTo(c.conn)
		clear(batch)
		spare = batch[:0]
		if err != nil {
			c.close(nil)
			return
		}
		c.mu.Lock()
		c.queued -= n
		c.mu.Unlock()
	}
}

// readLoop forwards the client's frames to the other clients until the
// connection fails or the client sends what is not a frame.
func (c *client) readLoop() {
	defer c.s.wg.Done()
	err := forward(c.conn, c.s.maxMsg, func(chunk []byte) { c.s.broadcast(c, chunk) })
	if errors.Is(err, errBadFrame) {
		c.close(fmt.Errorf("clustersync: relay: disconnected a client: %w", err))
	} else {
		c.close(nil)
	}
	c.s.remove(c)
}

var errBadFrame = errors.New("invalid frame")

// checkLen reports a frame length that the relay does not forward.
func checkLen(n uint32, maxMsg int) error {
	if n == 0 {
		return fmt.Errorf("%w: empty", errBadFrame)
	}
	if uint64(n) > uint64(maxMsg) {
		return fmt.Errorf("%w: %d bytes, limit %d", errBadFrame, n, maxMsg)
	}
	return nil
}

// forward reads frames of at most maxMsg bytes from conn and passes them to
// emit, which may keep them, until a read fails or a frame is invalid (an
// error wrapping errBadFrame). Whole frames already buffered are passed
// together, as one chunk, so that a burst costs one queue entry and one
// write per client.
func forward(conn io.Reader, maxMsg int, emit func(chunk []byte)) error {
	r := bufio.NewReaderSize(conn, maxChunk)
	for {
		hdr, err := r.Peek(4)
		if err != nil {
			return err
		}
		n := binary.BigEndian.Uint32(hdr)
		if err := checkLen(n, maxMsg); err != nil {
			return err
		}
		size := 4 + int(n)
		// Take the following frames too while they are whole in the
		// buffer; stop before a bad one, which the next round rejects.
		if buffered, _ := r.Peek(r.Buffered()); len(buffered) >= size {
			for len(buffered) >= size+4 && size < maxChunk {
				n := binary.BigEndian.Uint32(buffered[size:])
				if checkLen(n, maxMsg) != nil || size+4+int(n) > len(buffered) || size+4+int(n) > maxChunk {
					break
				}
				size += 4 + int(n)
			}
		}
		chunk := make([]byte, size)
		if _, err := io.ReadFull(r, chunk); err != nil {
			return err
		}
		emit(chunk)
	}
}
