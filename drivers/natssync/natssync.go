// Package natssync is the NATS backplane of edgesync: an edge.Driver that
// relays messages between instances with NATS core publish and subscribe,
// over the user's *nats.Conn. It is built on github.com/nats-io/nats.go.
//
// # Wire
//
// A message to topic in namespace is published on the subject
//
//	<channel>.<namespace token>.<topic token>
//
// where channel is Options.Channel, used as it is (one or more literal
// tokens: "chat", "app.chat"), and each token is the name escaped into a
// valid subject token: an empty name is "~"; otherwise each byte of
// [A-Za-z0-9_-] stands for itself and every other byte is written '%' and
// two upper-case hexadecimal digits, so namespace "/_ws" is "%2F_ws" and the
// escaping can be undone; a name whose escaped form would pass 128 bytes is
// "~" and the unpadded base64url of its SHA-256. A message to "lobby" in
// "/_ws" on channel "chat" goes to "chat.%2F_ws.lobby".
//
// The payload is one envelope (package envelope) stamped with the instance
// id, as on the other backplanes: an instance reads the namespace and topic
// from the envelope, never from the subject, so two names that share a
// hashed token are told apart. An instance drops its own echo. A payload
// that is not an envelope, or is larger than Options.MaxMessageBytes, is
// dropped and reported at edge.StageDelivery; nothing else is disturbed. A
// crossws instance has no NATS backplane, so only edgesync instances meet
// here.
//
// # Broadcast and routed modes
//
// By default the driver runs in broadcast mode: every instance subscribes
// once to "<channel>.>" and receives every message of the cluster, whatever
// its topic.
//
// With Options.Routed, the driver implements edge.RoutedDriver and an
// instance subscribes only to the topics its Hub routes: to
// "<channel>.*.<topic token>" when a topic gains its first local
// subscriber, in any namespace, and never to "<channel>.>". The wildcard on
// the namespace token takes in every namespace, the namespace-wide publish
// (Namespace "", token "~") among them, and the receiving Hub delivers by
// namespace as always. NATS routes each message only to the servers and
// clients that subscribe to its subject, so a topic nobody holds costs one
// publish and no instance anything, and an instance pays one subscription,
// cheap in NATS, per routed topic. Topics whose names hash to one token
// share a subscription; the driver delivers only the messages whose
// envelope names a topic it routes.
//
// Route only records the change: a goroutine of the driver makes and ends
// the subscriptions in the background, in the connection's buffer, without
// waiting for the server. A topic that loses its last subscriber stays
// subscribed for Options.RouteLinger (DefaultRouteLinger, 2 seconds, by
// default), and is kept when it comes back within it, so that a topic that
// flaps costs no SUB and UNSUB. nats.go sends every subscription again when
// it reconnects, those made while it was away among them, so the routes
// survive an outage of the server.
//
// The wire is the same in both modes, so broadcast and routed instances may
// share a channel: a broadcast instance receives everything a routed one
// publishes, and a routed one what a broadcast one publishes to the topics
// it routes.
//
// # Signed clusters
//
// Anyone who may publish on the channel's subjects can otherwise inject
// messages. With Options.Keys, every envelope carries an HMAC-SHA256 of a
// shared secret (envelope.Signer), and a payload without a valid one is
// dropped and reported at edge.StageDelivery with an error wrapping
// envelope.ErrSignature. NATS permissions on the channel's subjects are the
// other line of defence.
//
// # Publishing
//
// Publish and PublishBatch hand each message to the connection, which
// buffers it and writes it with the next ones, at once, from its own
// flusher: a batch costs no round trip at all, and neither does a single
// message. They return once the messages are in the connection's buffer,
// without waiting for the server, so the Hub's PublishTimeout bounds
// nothing there; what bounds a publish is the socket (a full buffer is
// written before the call returns) and the connection's ReconnectBufSize
// while it is reconnecting (messages are kept in that buffer and sent on
// reconnection; past it, or on a closed connection, Publish returns the
// error). NATS core delivers at most once: a message in flight when a
// connection drops may be lost, as the edge.Driver contract allows. A
// message larger than the server's max_payload (1 MiB by default) is
// refused with nats.ErrMaxPayload; the rest of a batch is still published.
//
// # Connections
//
// The driver publishes and subscribes on Options.Conn, the user's
// connection, which it never closes, and whose handlers it leaves alone:
// nats.go reconnects it and subscribes again on its own. The driver watches
// the connection's status (nats.Conn.StatusChanged) and, every second, sends
// it a PING (a flush) that must be answered within 2 seconds. A
// disconnection, or a PING left unanswered, is reported once per outage at
// edge.StageSubscribe; recovery is silent, once the connection is back and
// has answered a PING, so the next outage is reported again. The driver
// does not force a reconnection: a connection that is open but dead is
// replaced by nats.go once its own pings go unanswered (nats.PingInterval
// and nats.MaxPingsOutstanding; 2 minutes and 2 by default, which a
// backplane connection does well to shorten). A closed connection stays
// reported: it never comes back.
//
// A subscription that cannot keep up (nats.go's pending limits, a "slow
// consumer") loses messages: the driver reports how many at
// edge.StageDelivery.
//
// Instances may share one connection, but then they hear each other only
// when it was made without nats.NoEcho. The cheapest setup is a connection
// of its own for each instance, made with nats.NoEcho: the server then does
// not send an instance its own messages back, which the driver would
// otherwise receive and drop.
//
// On a NATS cluster, give each connection every node's URL (nats.Connect
// takes them comma-separated) so that it fails over to another node. A
// subscription is confirmed by the node the connection is on; the node
// passes it to the others in the background, so a message published on
// another node in the first moments after Subscribe returned can miss it,
// as a message published while an instance is not subscribed does.
package natssync

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/envelope"
	"github.com/edgesync/edgesync/internal/probe"
	"github.com/edgesync/edgesync/internal/reconnect"
)

// DefaultMaxMessageBytes is the largest inbound payload a driver accepts when
// Options.MaxMessageBytes is zero: 1 MiB, as in every driver.
const DefaultMaxMessageBytes = envelope.DefaultMaxMessageBytes

// Timing of the connection check.
const (
	// defaultCheckInterval is how often the connection is sent a PING,
	// whatever the traffic.
	defaultCheckInterval = time.Second
	// defaultCheckTimeout is how long its PONG may take.
	defaultCheckTimeout = 2 * time.Second
	// subscribeTimeout bounds how long Subscribe waits for the server to
	// confirm the subscription.
	subscribeTimeout = 5 * time.Second
	// maxPooledBuffer is the largest encode buffer kept for reuse.
	maxPooledBuffer = 1 << 20
)

// Options configure the driver of New.
type Options struct {
	// Conn is the user's NATS connection. It is never closed by the
	// driver, and its handlers are left as they are. Required.
	Conn *nats.Conn
	// Channel prefixes every subject of the cluster: one or more literal
	// subject tokens separated by '.' ("chat", "app.chat"), without
	// wildcards, white space or non-ASCII bytes, and at most
	// MaxChannelBytes long. Required.
	Channel string
	// MaxMessageBytes bounds an inbound payload: a larger one is dropped
	// and reported at edge.StageDelivery, undecoded. (The server's
	// max_payload bounds what a publish may carry.) 0 means
	// DefaultMaxMessageBytes.
	MaxMessageBytes int
	// Keys, when not empty, sign the cluster: the first key signs every
	// envelope this instance publishes, and an inbound envelope must be
	// signed with one of them. One that is not is dropped and reported at
	// edge.StageDelivery with an error wrapping envelope.ErrSignature.
	// Every instance of the cluster needs the same keys. To rotate, add
	// the new key second on every instance, then make it first, then
	// remove the old one. A key should be at least 32 random bytes; an
	// empty key is an error. See envelope.Signer for the format.
	Keys [][]byte
	// Routed relays by topic (edge.RoutedDriver): the driver of New then
	// implements edge.RoutedDriver and subscribes only to the subjects of
	// the topics its Hub routes, instead of to every subject of the
	// channel. See "Broadcast and routed modes" in the package
	// documentation.
	Routed bool
	// RouteLinger is how long a routed instance stays subscribed to a
	// topic after its Hub stopped routing it, so that a topic that comes
	// back at once costs no UNSUB and SUB. 0 means DefaultRouteLinger; a
	// negative value unsubscribes at once. Unused unless Routed.
	RouteLinger time.Duration
}

// New returns the edge.Sync that builds, for each instance, a driver relaying
// through NATS as opts say. The Sync returns an error when opts.Conn is nil
// or closed, opts.Channel is not a valid subject prefix, or a key of
// opts.Keys is empty.
//
// The driver also implements edge.BatchDriver, and with opts.Routed
// edge.RoutedDriver. It reports a lost connection
// at edge.StageSubscribe once per outage and reports nothing when the
// connection is back: the next outage is reported again.
func New(opts Options) edge.Sync {
	return func(inst edge.Instance) (edge.Driver, error) {
		if opts.Conn == nil {
			return nil, errors.New("natssync: Options.Conn is nil")
		}
		if opts.Conn.IsClosed() {
			return nil, fmt.Errorf("natssync: Options.Conn: %w", nats.ErrConnectionClosed)
		}
		if err := validateChannel(opts.Channel); err != nil {
			return nil, err
		}
		if inst.ID == "" {
			return nil, errors.New("natssync: the instance has no ID")
		}
		signer, err := envelope.NewSigner(opts.Channel, opts.Keys)
		if err != nil {
			return nil, fmt.Errorf("natssync: Options.Keys: %w", err)
		}
		d := &driver{
			signer:   signer,
			conn:     opts.Conn,
			channel:  opts.Channel,
			wildcard: opts.Channel + ".>",
			maxBytes: opts.MaxMessageBytes,
			id:       inst.ID,
			report:   inst.Report,
			inbound:  inst.CountInbound,
			echo:     []byte(envelope.EchoPrefix(inst.ID)),
			interval: defaultCheckInterval,
			timeout:  defaultCheckTimeout,
		}
		if d.maxBytes <= 0 {
			d.maxBytes = DefaultMaxMessageBytes
		}
		if d.report == nil {
			d.report = func(error, edge.Stage) {}
		}
		d.outage = reconnect.NewOutage(d.report)
		if opts.Routed {
			d.wildcard = opts.Channel + ".*.*"
			d.routes = newRouter(opts.Channel, opts.RouteLinger)
			return routedDriver{d}, nil
		}
		return d, nil
	}
}

// driver is the edge.BatchDriver of one instance.
type driver struct {
	signer   *envelope.Signer // nil: unsigned
	conn     *nats.Conn
	channel  string
	wildcard string // the subscription of broadcast mode, "<channel>.>"; routed, "<channel>.*.*", named in errors
	maxBytes int
	id       string
	report   func(error, edge.Stage)
	inbound  func(size int) // edge.Instance.CountInbound
	echo     []byte
	interval time.Duration // see defaultCheckInterval
	timeout  time.Duration // see defaultCheckTimeout
	outage   *reconnect.Outage
	routes   *router // nil: broadcast

	closed atomic.Bool
	bufs   sync.Pool // of *pubBuffer
	wg     sync.WaitGroup

	// quietMu is held while a message is delivered; quiet, set by Close,
	// stops every later delivery.
	quietMu sync.Mutex
	quiet   bool

	mu      sync.Mutex
	started bool
	stopped bool
	sub     *nats.Subscription // nil once stopped
	cancel  context.CancelFunc // cancels the watcher's context
}

var _ edge.BatchDriver = (*driver)(nil)

// pubBuffer is what one publishing call owns: the buffer its envelopes are
// encoded into, and the subject of the last address it published to, which
// the next message, most often to the same topic, reuses.
type pubBuffer struct {
	buf              []byte
	namespace, topic string
	subject          string // "" until the first message
}

// subjectOf returns the subject of a message to topic in namespace.
func (b *pubBuffer) subjectOf(channel, namespace, topic string) string {
	if b.subject == "" || namespace != b.namespace || topic != b.topic {
		b.namespace, b.topic, b.subject = namespace, topic, subject(channel, namespace, topic)
	}
	return b.subject
}

func (d *driver) getBuffer() *pubBuffer {
	if b, ok := d.bufs.Get().(*pubBuffer); ok {
		return b
	}
	return &pubBuffer{buf: make([]byte, 0, 512)}
}

func (d *driver) putBuffer(b *pubBuffer) {
	if cap(b.buf) > maxPooledBuffer || len(b.namespace)+len(b.topic) > maxPooledBuffer {
		return
	}
	b.buf = b.buf[:0]
	d.bufs.Put(b)
}

func (d *driver) errClosed(op string) error {
	return fmt.Errorf("natssync: %s: %w", op, edge.ErrClosed)
}

// publish encodes msg into buf and hands it to the connection, which copies
// it into its buffer.
func (d *driver) publish(b *pubBuffer, msg edge.Message) error {
	var err error
	b.buf, err = d.signer.AppendEncode(b.buf[:0], d.id, msg)
	if err != nil {
		return fmt.Errorf("natssync: publish: %w", err)
	}
	subj := b.subjectOf(d.channel, msg.Namespace, msg.Topic)
	if err := d.conn.Publish(subj, b.buf); err != nil {
		return fmt.Errorf("natssync: publish to %q: %w", subj, err)
	}
	return nil
}

// Publish relays msg to the other instances. It returns once the message is
// in the connection's buffer; see the package documentation.
func (d *driver) Publish(ctx context.Context, msg edge.Message) error {
	if d.closed.Load() {
		return d.errClosed("publish")
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("natssync: publish: %w", err)
	}
	b := d.getBuffer()
	defer d.putBuffer(b)
	return d.publish(b, msg)
}

// PublishBatch relays msgs to the other instances: each is handed to the
// connection's buffer, which writes them together, with no round trip. A
// message the connection refuses (one larger than the server's max_payload)
// does not stop the others; a connection that is closed, or whose reconnect
// buffer is full, stops the batch. It returns every error met, joined.
func (d *driver) PublishBatch(ctx context.Context, msgs []edge.Message) error {
	if d.closed.Load() {
		return d.errClosed("publish")
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("natssync: publish: %w", err)
	}
	b := d.getBuffer()
	defer d.putBuffer(b)
	var errs []error
	for i, msg := range msgs {
		err := d.publish(b, msg)
		if err == nil {
			continue
		}
		errs = append(errs, err)
		if !errors.Is(err, nats.ErrMaxPayload) {
			if rest := len(msgs) - i - 1; rest > 0 {
				errs = append(errs, fmt.Errorf("natssync: %d more messages of the batch not published", rest))
			}
			break
		}
	}
	return errors.Join(errs...)
}

// Subscribe subscribes to every subject of the channel and starts watching
// the connection. It returns nil once the server has confirmed the
// subscription (it has answered a PING sent after it). When the server does
// not answer, it returns the error, and the subscription stays with the
// connection, which sends it again when it reconnects; the outage is not
// reported a second time. Only a connection that is closed, or draining,
// refuses the subscription for good.
func (d *driver) Subscribe(ctx context.Context, deliver func(edge.Message)) error {
	if deliver == nil {
		return errors.New("natssync: subscribe: deliver is nil")
	}
	d.mu.Lock()
	if d.closed.Load() || d.stopped {
		d.mu.Unlock()
		return d.errClosed("subscribe")
	}
	if d.started {
		d.mu.Unlock()
		return errors.New("natssync: subscribe: called twice")
	}
	d.started = true
	// Registered before the subscription, so that no change of status
	// after it is missed.
	status := d.conn.StatusChanged()
	handler := func(m *nats.Msg) { d.handle(m.Data, deliver) }
	var sub *nats.Subscription
	if d.routes == nil {
		var err error
		sub, err = d.conn.Subscribe(d.wildcard, handler)
		if err != nil {
			d.mu.Unlock()
			d.conn.RemoveStatusListener(status)
			return fmt.Errorf("natssync: subscribe to %q: %w", d.wildcard, err)
		}
	} else if err := refusal(d.conn); err != nil {
		d.mu.Unlock()
		d.conn.RemoveStatusListener(status)
		return fmt.Errorf("natssync: subscribe to %q: %w", d.wildcard, err)
	}
	watchCtx, cancel := context.WithCancel(ctx)
	d.sub, d.cancel = sub, cancel
	d.wg.Add(1)
	if d.routes != nil {
		d.wg.Add(1)
	}
	d.mu.Unlock()
	if d.routes != nil {
		// The topics routed so far are subscribed before the PING
		// that confirms them; the rest follow in the background.
		d.routes.start(d.conn, handler)
		go func() {
			defer d.wg.Done()
			d.routes.run(watchCtx, d.conn)
		}()
		d.routes.wake()
	}

	fctx, fcancel := context.WithTimeout(ctx, subscribeTimeout)
	err := d.conn.FlushWithContext(fctx)
	fcancel()
	go d.watch(watchCtx, status, sub, err == nil)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("natssync: subscribe to %q: %w", d.wildcard, ctx.Err())
		}
		return fmt.Errorf("natssync: subscribe to %q: the server did not confirm it: %w", d.wildcard, d.cause(err))
	}
	return nil
}

// cause adds the connection's last error, when it has one, to err.
func (d *driver) cause(err error) error {
	if last := d.conn.LastError(); last != nil && !errors.Is(err, last) {
		return fmt.Errorf("%w (last connection error: %w)", err, last)
	}
	return err
}

// watch follows the connection until ctx is done: every change of its
// status, and every interval a PING that must be answered within the
// timeout. up says whether Subscribe's confirmation came: until the first
// one, the outage is the one Subscribe returned, and not reported again.
//
// A status other than CONNECTED, whether it is the connection's current one
// or one it passed through since the last check (a reconnection quicker
// than the check), counts as a loss. The connection is back once it is
// CONNECTED and answers a PING, which it does only after it has sent the
// subscription to the server again.
func (d *driver) watch(ctx context.Context, status chan nats.Status, sub *nats.Subscription, up bool) {
	defer d.wg.Done()
	defer d.stop()
	defer d.conn.RemoveStatusListener(status)
	everUp := up
	dropped := 0
	lost := func(err error) {
		if everUp {
			d.outage.Lost(fmt.Errorf("natssync: subscription to %q lost: %w", d.wildcard, err))
		}
	}
	tick := time.NewTicker(d.interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case s, ok := <-status:
			if !ok {
				status = nil // removed: the ticker goes on
				continue
			}
			if s != nats.CONNECTED {
				lost(d.cause(statusError(s)))
				continue // the next change, or the next tick, decides
			}
		case <-tick.C:
		}
		if s := d.conn.Status(); s != nats.CONNECTED {
			lost(d.cause(statusError(s)))
			continue
		}
		fctx, cancel := context.WithTimeout(ctx, d.timeout)
		err := d.conn.FlushWithContext(fctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			lost(d.cause(fmt.Errorf("no reply to PING within %v: %w", d.timeout, err)))
			continue
		}
		everUp = true
		d.outage.Restored()
		if sub != nil {
			if n, err := sub.Dropped(); err == nil && n > dropped {
				d.reportDropped(n - dropped)
				dropped = n
			}
		} else if n := d.routes.dropped(); n > 0 {
			d.reportDropped(n)
		}
	}
}

// refusal returns the error with which conn refuses every subscription, or
// nil.
func refusal(conn *nats.Conn) error {
	switch {
	case conn.IsClosed():
		return nats.ErrConnectionClosed
	case conn.IsDraining():
		return nats.ErrConnectionDraining
	}
	return nil
}

// reportDropped reports n messages lost to a slow consumer.
func (d *driver) reportDropped(n int) {
	d.report(fmt.Errorf("natssync: %d messages on %q dropped: the subscription could not keep up (slow consumer)",
		n, d.wildcard), edge.StageDelivery)
}

// statusError says that the connection is not connected but s. A closed
// connection, which never comes back, wraps nats.ErrConnectionClosed.
func statusError(s nats.Status) error {
	if s == nats.CLOSED {
		return fmt.Errorf("the connection is closed for good: %w", nats.ErrConnectionClosed)
	}
	return fmt.Errorf("the connection is %s", s)
}

// handle decodes one payload and delivers it unless it is the instance's own
// echo. It runs on the subscription's goroutine, one message at a time.
func (d *driver) handle(payload []byte, deliver func(edge.Message)) {
	d.quietMu.Lock()
	defer d.quietMu.Unlock()
	if d.quiet {
		return
	}
	d.inbound(len(payload)) // every payload, before it is filtered
	if len(payload) > d.maxBytes {
		d.report(fmt.Errorf("natssync: dropped a %d-byte payload on %q: larger than MaxMessageBytes (%d)",
			len(payload), d.wildcard, d.maxBytes), edge.StageDelivery)
		return
	}
	if bytes.HasPrefix(payload, d.echo) {
		return
	}
	if bytes.HasPrefix(payload, []byte(probe.Marker)) {
		return // another backplane's liveness probe: never a message
	}
	id, msg, err := d.signer.Decode(payload)
	if err != nil {
		d.report(fmt.Errorf("natssync: dropped a payload on %q: %w", d.wildcard, err), edge.StageDelivery)
		return
	}
	if id == d.id {
		return
	}
	if d.routes != nil && !d.routes.wants(msg.Topic) {
		return // another topic of the same hashed token, or one lingering
	}
	d.deliver(deliver, msg)
}

// deliver calls the Hub's callback, which must not take the subscription
// down.
func (d *driver) deliver(deliver func(edge.Message), msg edge.Message) {
	defer func() {
		if v := recover(); v != nil {
			d.report(&edge.PanicError{Value: v, Stack: debug.Stack()}, edge.StageDelivery)
		}
	}()
	deliver(msg)
}

// stop ends the subscription and the watcher. It is idempotent.
func (d *driver) stop() {
	d.mu.Lock()
	d.stopped = true
	sub, cancel := d.sub, d.cancel
	d.sub = nil
	d.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	if sub != nil {
		_ = sub.Unsubscribe() // fails only on a closed connection, which has dropped it
	}
	if d.routes != nil {
		d.routes.stop()
	}
}

// Close unsubscribes, stops watching the connection and waits until no
// message is being delivered: deliver is never called once Close has
// returned. The user's connection stays open. Close is idempotent; Publish
// after Close returns an error wrapping edge.ErrClosed.
func (d *driver) Close() error {
	d.closed.Store(true)
	d.stop()
	d.quietMu.Lock()
	d.quiet = true
	d.quietMu.Unlock()
	d.wg.Wait()
	return nil
}
