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
	// too large or malformed, a client too slow) and of errors accepting
	// connections. It must not block.
	OnError func(err error)
}

// Serve takes the relay role for r.Socket and relays between the clients
// that connect until ctx is done; then it disconnects them, removes the
// socket, releases the lock and returns nil. When another relay holds the
// lock it returns an error wrapping ErrRelayActive at once.
func (r *Relay) Serve(ctx context.Context) error {
	if err := validateSocket(r.Socket); err != nil {
		return err
	}
	if err := validateLimits(r.MaxMessageBytes, r.MaxQueueBytes); err != nil {
		return err
	}
	maxMsg := orDefault(r.MaxMessageBytes, DefaultMaxMessageBytes)
	s, err := listen(r.Socket, maxMsg, queueLimit(r.MaxQueueBytes, maxMsg), r.OnError)
	if err != nil {
		return err
	}
	<-ctx.Done()
	return s.close()
}

// server is a running relay: the lock, the listener and the connections of
// its clients.
type server struct {
	lock     *os.File
	ln       *net.UnixListener
	maxMsg   int
	maxQueue int
	onError  func(error)
	done     chan struct{} // closed by close

	mu     sync.RWMutex
	closed bool
	conns  map[*client]struct{}

	wg sync.WaitGroup
}

// listen takes the lock of socket and listens on it. It returns an error
// wrapping ErrRelayActive when another relay holds the lock.
func listen(socket string, maxMsg, maxQueue int, onError func(error)) (*server, error) {
	lock, err := tryLock(socket + ".lock")
	if err != nil {
		return nil, err
	}
	// The lock is ours: a socket file left there is stale.
	if err := removeStale(socket); err != nil {
		lock.Close()
		return nil, err
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: socket, Net: "unix"})
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("clustersync: listen: %w", err)
	}
	ln.SetUnlinkOnClose(true)
	s := &server{
		lock:     lock,
		ln:       ln,
		maxMsg:   maxMsg,
		maxQueue: maxQueue,
		onError:  onError,
		done:     make(chan struct{}),
		conns:    make(map[*client]struct{}),
	}
	s.wg.Add(1)
	go s.accept()
	return s, nil
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

func (s *server) report(err error) {
	if s.onError != nil {
		s.onError(err)
	}
}

// accept registers every connection until the listener is closed.
func (s *server) accept() {
	defer s.wg.Done()
	var delay time.Duration
	for {
		conn, err := s.ln.AcceptUnix()
		if err != nil {
			select {
			case <-s.done:
				return
			default:
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

// close disconnects every client, removes the socket and releases the lock.
func (s *server) close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	conns := make([]*client, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()

	close(s.done)
	// The listener removes the socket file; the lock, still held, makes
	// sure that it is ours.
	err := s.ln.Close()
	for _, c := range conns {
		c.close(nil)
	}
	s.wg.Wait()
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
	err := c.forward()
	if errors.Is(err, errBadFrame) {
		c.close(fmt.Errorf("clustersync: relay: disconnected a client: %w", err))
	} else {
		c.close(nil)
	}
	c.s.remove(c)
}

var errBadFrame = errors.New("invalid frame")

// checkLen reports a frame length that the relay does not forward.
func (c *client) checkLen(n uint32) error {
	if n == 0 {
		return fmt.Errorf("%w: empty", errBadFrame)
	}
	if uint64(n) > uint64(c.s.maxMsg) {
		return fmt.Errorf("%w: %d bytes, limit %d", errBadFrame, n, c.s.maxMsg)
	}
	return nil
}

// forward reads frames and broadcasts them. Whole frames already buffered
// are forwarded together, as one chunk, so that a burst costs one queue
// entry and one write per client.
func (c *client) forward() error {
	r := bufio.NewReaderSize(c.conn, maxChunk)
	for {
		hdr, err := r.Peek(4)
		if err != nil {
			return err
		}
		n := binary.BigEndian.Uint32(hdr)
		if err := c.checkLen(n); err != nil {
			return err
		}
		size := 4 + int(n)
		// Take the following frames too while they are whole in the
		// buffer; stop before a bad one, which the next round rejects.
		if buffered, _ := r.Peek(r.Buffered()); len(buffered) >= size {
			for len(buffered) >= size+4 && size < maxChunk {
				n := binary.BigEndian.Uint32(buffered[size:])
				if c.checkLen(n) != nil || size+4+int(n) > len(buffered) || size+4+int(n) > maxChunk {
					break
				}
				size += 4 + int(n)
			}
		}
		chunk := make([]byte, size)
		if _, err := io.ReadFull(r, chunk); err != nil {
			return err
		}
		c.s.broadcast(c, chunk)
	}
}
