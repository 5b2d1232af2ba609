package clustersync

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/envelope"
	"github.com/edgesync/edgesync/internal/reconnect"
)

// Defaults for the zero values of Options and Relay.
const (
	DefaultMaxMessageBytes = envelope.DefaultMaxMessageBytes // 1 MiB, as every driver
	DefaultMaxQueueBytes   = 8 << 20                         // 8 MiB
)

// MaxChannelLen is the longest channel name, in bytes.
const MaxChannelLen = 255

// Timing of connection attempts, which back off by package reconnect.
const (
	startupTimeout = 2 * time.Second // how long Subscribe tries before it returns an error
	greetTimeout   = 2 * time.Second // how long a relay may take to greet a new client
)

var (
	// ErrNotConnected is returned by Publish while the driver has no
	// connection to a relay: during an outage, or, for a driver that was
	// never subscribed, while no relay answers.
	ErrNotConnected = errors.New("clustersync: not connected to a relay")

	// ErrMessageTooLarge is returned by Publish for a message whose frame
	// exceeds MaxMessageBytes, and reported for such a frame received.
	ErrMessageTooLarge = errors.New("clustersync: message too large")

	// ErrRelayActive is returned by Relay.Serve when another relay, in this
	// process or another, holds the lock of the socket.
	ErrRelayActive = errors.New("clustersync: another relay holds the socket's lock")
)

// Options configure the driver of one instance.
type Options struct {
	// Socket is the path of the Unix socket that the processes of the
	// cluster share. It is required. The lock file that elects the relay
	// is Socket + ".lock", in the same directory.
	Socket string

	// Channel names the cluster: every frame carries it, and instances
	// drop the frames of other channels, so that several clusters may
	// share one socket. Required; at most MaxChannelLen bytes. Instances on
	// one channel but different sockets never meet.
	Channel string

	// MaxMessageBytes bounds one frame (channel name and envelope).
	// Publish refuses a larger message, and when this instance relays it
	// disconnects a client that sends a larger frame. 0 means
	// DefaultMaxMessageBytes.
	MaxMessageBytes int

	// MaxQueueBytes bounds, when this instance relays, what is queued for
	// one client: a client that falls that far behind is disconnected. 0
	// means DefaultMaxQueueBytes, or four times MaxMessageBytes if that is
	// more.
	MaxQueueBytes int

	// NoRelay makes the instance a client only: it never takes the relay
	// role, and waits for a Relay that a supervisor runs.
	NoRelay bool

	// Keys, when not empty, sign the cluster: the first key signs every
	// envelope this instance publishes, and an inbound envelope must be
	// signed with one of them. One that is not is dropped and reported at
	// edge.StageDelivery with an error wrapping envelope.ErrSignature:
	// count them in the Hub's OnError with errors.Is. Every instance of
	// the channel needs the same keys (a Relay needs none: it does not
	// decode envelopes). To rotate, add the new key second on every
	// instance, then make it first, then remove the old one. A key should
	// be at least 32 random bytes; an empty key is an error. See
	// envelope.Signer for the format.
	Keys [][]byte
}

// New returns the Sync that builds the clustersync driver of an instance.
// Invalid options are reported when the Sync is called, and so by edge.New.
//
// The driver's Subscribe takes the relay role or connects to the relay,
// trying for up to two seconds (a relay that has just been elected may not
// listen yet) before it returns the error; it keeps trying in the background
// after that. Publish and PublishBatch write frames to the relay, in one
// write per call, and fail with ErrNotConnected while there is no relay:
// nothing is queued. A driver that is never subscribed (that of a
// publish-only Hub, edge.Options.PublishOnly) connects to the relay as a
// client on its first Publish, and again on the Publish after a loss; it
// never takes the relay role (see the package documentation, "Publish-only
// instances"). Close releases the connection and, when the instance relays,
// the relay role.
func New(opts Options) edge.Sync {
	return func(inst edge.Instance) (edge.Driver, error) {
		if err := opts.validate(); err != nil {
			return nil, err
		}
		signer, err := envelope.NewSigner(opts.Channel, opts.Keys)
		if err != nil {
			return nil, fmt.Errorf("clustersync: Options.Keys: %w", err)
		}
		if inst.Report == nil {
			inst.Report = func(error, edge.Stage) {}
		}
		d := &driver{
			signer:   signer,
			socket:   opts.Socket,
			channel:  opts.Channel,
			maxMsg:   orDefault(opts.MaxMessageBytes, DefaultMaxMessageBytes),
			noRelay:  opts.NoRelay,
			inst:     inst,
			frameHdr: append([]byte{0, 0, 0, 0, byte(len(opts.Channel))}, opts.Channel...),
		}
		d.maxQueue = queueLimit(opts.MaxQueueBytes, d.maxMsg)
		return d, nil
	}
}

func (o Options) validate() error {
	if err := validateSocket(o.Socket); err != nil {
		return err
	}
	if o.Channel == "" {
		return errors.New("clustersync: Options.Channel is required")
	}
	if len(o.Channel) > MaxChannelLen {
		return fmt.Errorf("clustersync: channel name of %d bytes, limit %d", len(o.Channel), MaxChannelLen)
	}
	return validateLimits(o.MaxMessageBytes, o.MaxQueueBytes)
}

// driver is the edge.Driver of one instance.
type driver struct {
	signer   *envelope.Signer // nil: unsigned
	socket   string
	channel  string
	maxMsg   int
	maxQueue int
	noRelay  bool
	inst     edge.Instance
	frameHdr []byte // length placeholder, channel length, channel

	mu         sync.Mutex
	closed     bool
	subscribed bool
	cancel     context.CancelFunc
	conn       *net.UnixConn // the connection to the relay; nil while there is none
	srv        *server       // the relay, while this instance holds the role

	wmu  sync.Mutex // serializes writes to conn
	wbuf []byte

	wg sync.WaitGroup // the run goroutine, or the drain goroutine of a publish-only connection

	retry reconnect.Backoff // between connection attempts; the zero value but in tests

	// A driver that is never subscribed connects from Publish. After a
	// failed attempt, Publish fails at once until nextDial, so that an
	// outage costs one attempt per backoff step, not one per message.
	// Guarded by wmu.
	pubRetry reconnect.Backoff
	nextDial time.Time
	dialErr  error // of the last failed attempt
}

// Subscribe connects to the relay, or becomes it, and delivers what other
// instances publish on the channel. It returns once the connection is in
// place, or with the error of its last attempt after a few seconds; either
// way it keeps the connection up in the background until ctx is done or the
// driver is closed.
func (d *driver) Subscribe(ctx context.Context, deliver func(edge.Message)) error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return fmt.Errorf("clustersync: subscribe: %w", edge.ErrClosed)
	}
	if d.subscribed {
		d.mu.Unlock()
		return errors.New("clustersync: Subscribe called twice")
	}
	d.subscribed = true
	if d.conn != nil {
		// A connection that Publish made: its drain goroutine detaches
		// it, and the subscription makes its own.
		d.conn.Close()
	}
	ctx, d.cancel = context.WithCancel(ctx)
	ready := make(chan error, 1)
	d.wg.Add(1)
	go d.run(ctx, deliver, ready)
	d.mu.Unlock()
	return <-ready
}

// run keeps the connection to the relay: it reads from it, and when it is
// lost, reports the outage and connects again, by the rule of package
// reconnect.
func (d *driver) run(ctx context.Context, deliver func(edge.Message), ready chan<- error) {
	defer d.wg.Done()
	// A startup failure is Subscribe's error, which the Hub reports: it is
	// the first report of its outage, which the driver does not repeat.
	quiet := false
	outage := reconnect.NewOutage(func(err error, stage edge.Stage) {
		if quiet {
			quiet = false
			return
		}
		d.inst.Report(err, stage)
	})
	backoff := d.retry
	l, err := d.connect(ctx, &backoff, time.Now().Add(startupTimeout), nil)
	if err != nil {
		err = fmt.Errorf("clustersync: connect to %s: %w", d.socket, err)
		ready <- err
		ready = nil
		quiet = true
		outage.Lost(err)
	}
	for {
		if l == nil {
			if l, err = d.connect(ctx, &backoff, time.Time{}, outage); err != nil {
				return // ctx is done
			}
		}
		if !d.attach(l.conn) {
			l.conn.Close()
			if ready != nil {
				ready <- fmt.Errorf("clustersync: subscribe: %w", edge.ErrClosed)
			}
			return
		}
		if ready != nil {
			// Publish works from now on.
			ready <- nil
			ready = nil
		}
		outage.Restored()
		backoff.Reset()
		err := d.read(l.r, deliver)
		d.detach(l.conn)
		l = nil
		if ctx.Err() != nil || d.isClosed() {
			return
		}
		outage.Lost(fmt.Errorf("clustersync: lost connection to relay at %s: %w", d.socket, err))
	}
}

// link is a connection to a relay that has greeted us.
type link struct {
	conn *net.UnixConn
	r    *bufio.Reader
}

// connect tries to take the relay role, then to connect, waiting between
// attempts by backoff. With a giveUp time it returns the last error after
// it; without one it tries until ctx is done. A failed attempt is recorded
// as a loss in outage, if it is not nil, which reports the first one only.
func (d *driver) connect(ctx context.Context, backoff *reconnect.Backoff, giveUp time.Time, outage *reconnect.Outage) (*link, error) {
	for {
		l, err := d.attempt(ctx)
		if err == nil {
			return l, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if !giveUp.IsZero() && time.Now().After(giveUp) {
			return nil, err
		}
		if outage != nil {
			outage.Lost(fmt.Errorf("clustersync: no relay at %s: %w", d.socket, err))
		}
		if !backoff.Wait(ctx) {
			return nil, ctx.Err()
		}
	}
}

// attempt takes the relay role if it is free, then connects to the relay.
func (d *driver) attempt(ctx context.Context) (*link, error) {
	if !d.noRelay && !d.isRelay() {
		if old := d.dropStoppedRelay(); old != nil {
			// It stepped down: its lock is released once it is closed.
			old.close()
		}
		srv, err := listen(d.socket, d.maxMsg, d.maxQueue, nil, func(err error) { d.inst.Report(err, edge.StageSubscribe) })
		switch {
		case err == nil:
			d.mu.Lock()
			if d.closed {
				d.mu.Unlock()
				srv.close()
				return nil, edge.ErrClosed
			}
			d.srv = srv
			d.mu.Unlock()
		case errors.Is(err, ErrRelayActive):
			// Another process relays: connect to it.
		default:
			return nil, err
		}
	}
	return dial(ctx, d.socket)
}

// dial connects to the relay at socket and waits for its greeting, which
// says that the relay has registered the connection.
func dial(ctx context.Context, socket string) (*link, error) {
	var dialer net.Dialer
	c, err := dialer.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, err
	}
	conn := c.(*net.UnixConn)
	if err := conn.SetReadDeadline(time.Now().Add(greetTimeout)); err != nil {
		conn.Close()
		return nil, err
	}
	stop := onDone(ctx, func() { conn.SetReadDeadline(time.Unix(1, 0)) })
	r := bufio.NewReaderSize(conn, 64<<10)
	var hello [len(greeting)]byte
	_, err = io.ReadFull(r, hello[:])
	stop()
	if err == nil && string(hello[:]) != greeting {
		err = fmt.Errorf("clustersync: %s is not a clustersync relay (greeting %q)", socket, hello[:])
	}
	if err == nil {
		err = conn.SetReadDeadline(time.Time{})
	}
	if err != nil {
		conn.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	return &link{conn: conn, r: r}, nil
}

// attach makes conn the driver's connection, unless the driver is closed.
func (d *driver) attach(conn *net.UnixConn) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return false
	}
	d.conn = conn
	return true
}

// detach forgets and closes conn.
func (d *driver) detach(conn *net.UnixConn) {
	d.forget(conn)
	conn.Close()
}

// forget stops publishing on conn, if it is the driver's connection.
func (d *driver) forget(conn *net.UnixConn) {
	d.mu.Lock()
	if d.conn == conn {
		d.conn = nil
	}
	d.mu.Unlock()
}

func (d *driver) isClosed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closed
}

// isRelay reports whether this instance holds the relay role.
func (d *driver) isRelay() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.srv != nil && !d.srv.stopped()
}

// dropStoppedRelay forgets and returns the instance's relay if it stopped
// on its own, having stepped down.
func (d *driver) dropStoppedRelay() *server {
	d.mu.Lock()
	defer d.mu.Unlock()
	srv := d.srv
	if srv == nil || !srv.stopped() {
		return nil
	}
	d.srv = nil
	return srv
}

// read delivers the frames that the relay forwards until the connection fails.
func (d *driver) read(r *bufio.Reader, deliver func(edge.Message)) error {
	var hdr [4]byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return err
		}
		n := int64(binary.BigEndian.Uint32(hdr[:]))
		d.inst.CountInbound(int(n)) // every frame, before it is filtered
		if n > int64(d.maxMsg) {
			d.inst.Report(fmt.Errorf("%w: received a frame of %d bytes, limit %d", ErrMessageTooLarge, n, d.maxMsg), edge.StageDelivery)
			if _, err := io.CopyN(io.Discard, r, n); err != nil {
				return err
			}
			continue
		}
		if int(n) <= r.Size() {
			// Decode does not keep the frame: decode it in the buffer.
			frame, err := r.Peek(int(n))
			if err != nil {
				return err
			}
			d.handle(frame, deliver)
			r.Discard(int(n))
			continue
		}
		frame := make([]byte, n)
		if _, err := io.ReadFull(r, frame); err != nil {
			return err
		}
		d.handle(frame, deliver)
	}
}

// handle delivers the message of one frame, unless it belongs to another
// channel, is the instance's own echo or is malformed.
func (d *driver) handle(frame []byte, deliver func(edge.Message)) {
	end, err := channelEnd(frame)
	if err != nil {
		d.inst.Report(err, edge.StageDelivery)
		return
	}
	if string(frame[1:end]) != d.channel {
		return
	}
	id, msg, err := d.signer.Decode(frame[end:])
	if err != nil {
		d.inst.Report(fmt.Errorf("clustersync: %w", err), edge.StageDelivery)
		return
	}
	if id == d.inst.ID {
		return
	}
	deliver(msg)
}

// Publish sends msg to the relay, which forwards it to every other instance.
func (d *driver) Publish(ctx context.Context, msg edge.Message) error {
	return d.PublishBatch(ctx, []edge.Message{msg})
}

// PublishBatch sends msgs to the relay in one write. A message too large to
// send is left out and its error returned, joined with any other.
func (d *driver) PublishBatch(ctx context.Context, msgs []edge.Message) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.wmu.Lock()
	defer d.wmu.Unlock()
	d.mu.Lock()
	closed, conn, subscribed := d.closed, d.conn, d.subscribed
	d.mu.Unlock()
	if closed {
		return fmt.Errorf("clustersync: publish: %w", edge.ErrClosed)
	}
	if conn == nil && subscribed {
		return ErrNotConnected
	}
	if conn == nil {
		var err error
		if conn, err = d.dialForPublish(ctx); err != nil {
			return err
		}
	}

	buf, errs := d.appendFrames(d.wbuf[:0], msgs)
	return d.flush(ctx, conn, buf, errs)
}

// dialForPublish connects a driver that is not subscribed to the relay, as a
// client only, and starts the goroutine that drains the connection. It is
// called with wmu held.
func (d *driver) dialForPublish(ctx context.Context) (*net.UnixConn, error) {
	if time.Now().Before(d.nextDial) {
		return nil, fmt.Errorf("%w at %s: %w", ErrNotConnected, d.socket, d.dialErr)
	}
	l, err := dial(ctx, d.socket)
	if err != nil {
		if ctx.Err() == nil {
			d.nextDial, d.dialErr = time.Now().Add(d.pubRetry.Next()), err
		}
		return nil, fmt.Errorf("%w at %s: %w", ErrNotConnected, d.socket, err)
	}
	d.pubRetry.Reset()
	d.nextDial, d.dialErr = time.Time{}, nil
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case d.closed:
		l.conn.Close()
		return nil, fmt.Errorf("clustersync: publish: %w", edge.ErrClosed)
	case d.subscribed:
		// Subscribe was called meanwhile: its connection serves.
		l.conn.Close()
		return nil, ErrNotConnected
	}
	d.conn = l.conn
	d.wg.Add(1)
	go d.drain(l)
	return l.conn, nil
}

// drain reads and discards what the relay forwards on a connection that
// Publish made, which it must read lest the relay find it too slow and
// disconnect it, until the connection fails; then it forgets the connection,
// so that the next Publish connects again.
func (d *driver) drain(l *link) {
	defer d.wg.Done()
	_, _ = io.Copy(io.Discard, l.r)
	d.detach(l.conn)
}

// appendFrames appends to buf the frames of msgs, leaving out a message
// that cannot be encoded or is too large to send, and returns the errors of
// those.
func (d *driver) appendFrames(buf []byte, msgs []edge.Message) ([]byte, []error) {
	var errs []error
	for _, msg := range msgs {
		start := len(buf)
		buf = append(buf, d.frameHdr...)
		out, err := d.signer.AppendEncode(buf, d.inst.ID, msg)
		if err != nil {
			buf = buf[:start]
			errs = append(errs, fmt.Errorf("clustersync: encode: %w", err))
			continue
		}
		buf = out
		n := len(buf) - start - 4
		if n > d.maxMsg {
			buf = buf[:start]
			errs = append(errs, fmt.Errorf("%w: a frame of %d bytes, limit %d", ErrMessageTooLarge, n, d.maxMsg))
			continue
		}
		binary.BigEndian.PutUint32(buf[start:], uint32(n))
	}
	return buf, errs
}

// flush writes buf, the frames of a batch, to conn, and keeps buf for the
// next batch unless it grew large. It returns errs joined with the error of
// the write.
func (d *driver) flush(ctx context.Context, conn *net.UnixConn, buf []byte, errs []error) error {
	if len(buf) > 0 {
		if err := write(ctx, conn, buf); err != nil {
			// write closed conn: the next publish must not use it.
			d.forget(conn)
			errs = append(errs, err)
		}
	}
	if cap(buf) <= 4*d.maxMsg {
		d.wbuf = buf[:0]
	} else {
		d.wbuf = nil
	}
	return errors.Join(errs...)
}

// write writes buf to conn, giving up when ctx is done. A failed write may
// have sent part of a frame, so it closes conn: the driver reconnects.
func write(ctx context.Context, conn *net.UnixConn, buf []byte) error {
	deadline, _ := ctx.Deadline()
	if err := conn.SetWriteDeadline(deadline); err != nil {
		conn.Close()
		return fmt.Errorf("clustersync: publish: %w", err)
	}
	stop := onDone(ctx, func() { conn.SetWriteDeadline(time.Unix(1, 0)) })
	_, err := conn.Write(buf)
	stop()
	if err != nil {
		conn.Close()
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return fmt.Errorf("clustersync: publish: %w", err)
	}
	return nil
}

// Close closes the connection to the relay and, when this instance relays,
// the relay: its socket is removed and its lock released, so another instance
// takes the role over.
func (d *driver) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	if d.cancel != nil {
		d.cancel()
	}
	if d.conn != nil {
		d.conn.Close()
	}
	d.mu.Unlock()
	d.wg.Wait()

	d.mu.Lock()
	srv := d.srv
	d.srv = nil
	d.mu.Unlock()
	if srv != nil {
		return srv.close()
	}
	return nil
}

// onDone calls f when ctx is done, until stop is called. Unlike
// context.AfterFunc's, stop waits for an f that has started, so f never runs
// after stop returns (and never moves a deadline set after that).
func onDone(ctx context.Context, f func()) (stop func()) {
	if ctx.Done() == nil {
		return func() {}
	}
	ran := make(chan struct{})
	stopFunc := context.AfterFunc(ctx, func() {
		defer close(ran)
		f()
	})
	return func() {
		if !stopFunc() {
			<-ran
		}
	}
}

func orDefault(v, def int) int {
	if v <= 0 {
		return def
	}
	return v
}

// queueLimit is the per-client queue bound for maxQueue (0: default) and
// frames of maxMsg bytes.
func queueLimit(maxQueue, maxMsg int) int {
	if maxQueue > 0 {
		return maxQueue
	}
	return max(DefaultMaxQueueBytes, 4*maxMsg)
}

// validateLimits checks MaxMessageBytes and MaxQueueBytes.
func validateLimits(maxMsg, maxQueue int) error {
	const limit = 1 << 30
	if maxMsg > limit {
		return fmt.Errorf("clustersync: MaxMessageBytes %d exceeds %d", maxMsg, limit)
	}
	if maxQueue > 0 && maxQueue < orDefault(maxMsg, DefaultMaxMessageBytes)+4 {
		return fmt.Errorf("clustersync: MaxQueueBytes %d cannot hold one frame of MaxMessageBytes", maxQueue)
	}
	return nil
}
