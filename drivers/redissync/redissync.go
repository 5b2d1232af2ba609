// Package redissync is the Redis backplane of edgesync: an edge.Driver that
// relays messages between instances with Redis PUBLISH and SUBSCRIBE, and an
// edge.Registry that keeps gateway-held connections in Redis. It is built on
// github.com/redis/go-redis/v9.
//
// # Wire
//
// Every instance of a broadcast cluster (the default) publishes to and
// subscribes to one Redis channel, named by Options.Channel and used as it
// is. Each message is one envelope (package envelope) stamped with the
// instance id, the format of the crossws sync backplane, so a Node crossws
// instance on the same channel and the same Redis joins the cluster. An
// instance drops its own echo. A payload that is not an envelope, or is
// larger than Options.MaxMessageBytes, is dropped and reported at
// edge.StageDelivery; nothing else is disturbed.
//
// # Routed clusters
//
// With Options.Routed, an instance receives only the messages of the topics
// its Hub routes (edge.RoutedDriver) instead of every message of the
// channel. Topics are hashed (FNV-1a) into Options.RouteBuckets bucket
// channels, named "<channel>:r:<bucket>", so that an instance holds a
// bounded number of Redis subscriptions however many topics it serves. A
// message goes to the bucket channel of its topic, whatever its namespace,
// with one PUBLISH; Redis delivers it to the instances subscribed to that
// bucket only, and a publish to a topic no instance routes costs Redis one
// PUBLISH and the instances nothing. An instance drops the messages of a
// bucket's other topics, undelivered. A namespace-wide publish (Namespace
// "") reaches every namespace of the instances that route its topic, and
// Hub.SendTo reaches a peer through the topic of its own that its Hub
// routes.
//
// The driver subscribes and unsubscribes bucket channels in the background,
// on its one subscription connection: the buckets that stay subscribed lose
// nothing meanwhile. A bucket whose last topic went away stays subscribed
// for Options.RouteLinger, and is kept when one of its topics comes back
// within it, so that a topic that flaps costs no command. After a
// reconnection every wanted bucket is subscribed again. The probes of the
// liveness check (below) go to "<channel>:p:<instance id>", a channel of
// the instance's own.
//
// Every instance of a routed cluster must set Routed and the same
// RouteBuckets. A crossws instance speaks broadcast only: it cannot join a
// routed cluster (it publishes to, and listens on, the channel itself,
// which routed instances neither read nor write). Broadcast stays the
// default.
//
// # Signed clusters
//
// Anyone who may PUBLISH on the channel can otherwise inject messages. With
// Options.Keys, every envelope carries an HMAC-SHA256 of a shared secret
// (envelope.Signer), and a payload without a valid one is dropped and
// reported at edge.StageDelivery with an error wrapping
// envelope.ErrSignature. A crossws instance writes unsigned envelopes, so it
// cannot publish into a signed cluster (it can still read it).
//
// # Connections
//
// The driver subscribes on one connection of its own, taken from the user's
// client with Subscribe, and publishes through the client's pool (a batch of
// messages goes out as one pipeline, in one round trip). The user's client is
// never closed. A lost subscription connection (a killed client, a restarted
// server, a failover) is reported once per outage at edge.StageSubscribe, not
// once per attempt, and the driver subscribes again with a backoff that starts
// at a few milliseconds and is capped at a quarter of a second; messages
// published while it is not subscribed are lost, as the edge.Driver contract
// allows.
//
// # Liveness
//
// A connection can die without closing (a network that drops every packet, a
// peer that froze) and a subscription can look healthy and receive nothing (a
// failover that left it on the wrong server). So every second, whatever the
// traffic, the driver sends PING on the subscription connection, and
// publishes a probe through the client's pool to the channel it subscribes
// (in a routed cluster, a probe channel of its own). When the PONG or the
// probe has not come back within 2 seconds, the subscription is reported
// lost at edge.StageSubscribe and replaced: a dead subscription is found out
// within 3 seconds. A probe is the JSON object
// {"edgesync":"probe","id":"<instance id>","n":<number>}, not an envelope:
// other instances, and crossws instances, drop it without a report. Probes
// that cannot be published (the publishing side is down too) prove nothing
// and are not reported: the Hub reports the failing relays at
// edge.StagePublish.
//
// On the publishing side, go-redis discards a pool connection on which a
// PUBLISH timed out: it is not reused. A PUBLISH on a dead connection times
// out after the client's ReadTimeout (5 seconds by default); it honours the
// Hub's PublishTimeout (2 seconds by default) only when the client's
// ContextTimeoutEnabled is set, which is what a client for this driver
// should do.
//
// # Clients
//
// Options.Client is any redis.UniversalClient:
//
//   - *redis.Client (redis.NewClient): one server. The subscription takes one
//     connection outside the client's pool, so PoolSize needs no room for it.
//   - *redis.ClusterClient (redis.NewClusterClient): the driver relays with
//     sharded pub/sub (Redis 7), always; see "Redis Cluster" below.
//   - a failover client (redis.NewFailoverClient, Redis Sentinel): the
//     client publishes to the current master; when the subscription
//     connection drops, it reconnects to the master that Sentinel names.
//     Messages published on a master are also delivered to subscribers on
//     its replicas, so a subscription left on a demoted master still
//     receives them. Leave FailoverOptions.ReplicaOnly unset: a PUBLISH
//     sent to a replica reaches that replica's subscribers only, and the
//     Registry writes.
//
// With NewRegistry the same three kinds of client serve a Registry: its keys
// carry a hash tag so that every key of one channel lives in one cluster
// slot, and every script and transaction it runs stays in that slot.
//
// # Redis Cluster
//
// A plain PUBLISH in a Redis Cluster is copied to every node over the
// cluster bus, so every node carries every message. With a
// *redis.ClusterClient, the driver therefore uses sharded pub/sub: it
// publishes with SPUBLISH and subscribes with SSUBSCRIBE, and a message
// travels to the master that owns its channel's slot (and that master's
// replicas) only. This is automatic, as a user of a cluster client expects:
// the sharded channels hold the same envelopes, under the same names.
//
// In broadcast, the channel is one sharded channel: the whole cluster of
// instances lives on the shard of its slot. In a routed cluster, the bucket
// channels hash to slots all over the cluster, and so spread over the
// shards; an instance holds one subscription connection per master that
// owns buckets it wants, with each bucket SSUBSCRIBEd on the master of its
// slot (Redis takes the channels of one slot only per SSUBSCRIBE). A
// channel name with a hash tag ("{…}") puts every bucket in one slot, on
// one shard: leave braces out of a routed cluster's channel.
//
// Each shard subscription is checked as the single server's is (see
// Liveness): a PING on it, and a probe published through the cluster client
// to a channel of the instance's own whose hash tag puts it in a slot of
// that master, every second. When a shard subscription fails (its
// connection drops because its master died, its PING or its probe does not
// come back, the server refuses a command with MOVED), the driver drops it,
// has the client reload the cluster's slot map, and, with the backoff
// above, subscribes its channels again on the masters that own their slots
// now: after a failover, on the promoted replica. When the server itself
// unsubscribes a channel (it sends SUNSUBSCRIBE when the channel's slot
// moves to another master), that channel alone is subscribed again on its
// new master. The subscriptions of the other shards are left as they are,
// and lose nothing meanwhile. The outage is reported once, at
// edge.StageSubscribe, however many shards it takes; it ends once every
// shard subscription is back and its probe has come back. After a failed
// publish, too, the driver has the client reload the slot map, which
// go-redis does not do after every failure (a dead master that refuses
// connections), so that publishes find the promoted master.
//
// A crossws instance publishes and subscribes with plain PUBLISH and
// SUBSCRIBE, so on a cluster it neither hears a sharded instance nor is
// heard by one. To join crossws instances on a cluster, give the driver a
// *redis.Client of one of its nodes instead: plain pub/sub then reaches
// every node, as crossws expects, at the cost of the bus traffic above and
// without failover.
package redissync

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/envelope"
	"github.com/edgesync/edgesync/internal/probe"
	"github.com/edgesync/edgesync/internal/reconnect"
)

// DefaultMaxMessageBytes is the largest inbound payload a driver accepts when
// Options.MaxMessageBytes is zero: 1 MiB, as in every driver.
const DefaultMaxMessageBytes = envelope.DefaultMaxMessageBytes

// Timing of the subscription loop.
const (
	// defaultProbeInterval is how often the subscription is checked,
	// whatever the traffic: a PING on its connection and a probe through
	// the pool.
	defaultProbeInterval = time.Second
	// defaultProbeTimeout is how long a PONG or a probe may take to come
	// back before the subscription is replaced.
	defaultProbeTimeout = 2 * time.Second
	// minBackoff and maxBackoff bound the wait between two attempts to
	// subscribe again.
	minBackoff = 5 * time.Millisecond
	maxBackoff = 250 * time.Millisecond
	// maxPooledBuffer is the largest encode buffer kept for reuse.
	maxPooledBuffer = 1 << 20
)

// Options configure the driver of New.
type Options struct {
	// Client is the user's Redis client: a *redis.Client, a
	// *redis.ClusterClient or a failover client. It is never closed by
	// the driver. With a *redis.ClusterClient the driver relays with
	// sharded pub/sub (see "Redis Cluster" in the package documentation).
	// Required.
	Client redis.UniversalClient
	// Channel is the Redis channel the instances of one cluster share,
	// used as it is (on a Redis Cluster, as a sharded channel). Required.
	Channel string
	// MaxMessageBytes bounds an inbound payload: a larger one is dropped
	// and reported at edge.StageDelivery, undecoded. (go-redis has received it
	// whole by then; Redis's proto-max-bulk-len bounds what a PUBLISH may
	// carry.) 0 means DefaultMaxMessageBytes.
	MaxMessageBytes int
	// Keys, when not empty, sign the cluster: the first key signs every
	// envelope this instance publishes, and an inbound envelope must be
	// signed with one of them. One that is not is dropped and reported at
	// edge.StageDelivery with an error wrapping envelope.ErrSignature:
	// count them in the Hub's OnError with errors.Is. Every instance of
	// the cluster needs the same keys. To rotate, add the new key second
	// on every instance, then make it first, then remove the old one. A
	// key should be at least 32 random bytes; an empty key is an error.
	// See envelope.Signer for the format.
	Keys [][]byte
	// Routed relays by topic (edge.RoutedDriver): the driver of New then
	// implements edge.RoutedDriver, and an instance receives only the
	// messages of the topics its Hub routes. See "Routed clusters" in the
	// package documentation. Every instance of a cluster must agree on
	// Routed and on RouteBuckets; a crossws instance cannot join a routed
	// cluster.
	Routed bool
	// RouteBuckets is the number of bucket channels a routed cluster hashes
	// its topics into, which bounds the Redis subscriptions of an
	// instance. 0 means DefaultRouteBuckets; more than MaxRouteBuckets is
	// an error. Unused unless Routed.
	RouteBuckets int
	// RouteLinger is how long a routed instance stays subscribed to a
	// bucket channel after the last of its topics went away, so that a
	// topic that flaps costs no UNSUBSCRIBE and SUBSCRIBE. 0 means
	// DefaultRouteLinger; a negative value releases a bucket at once.
	// Unused unless Routed.
	RouteLinger time.Duration
}

// New returns the edge.Sync that builds, for each instance, a driver relaying
// through Redis pub/sub as opts say. The Sync returns an error when
// opts.Client or opts.Channel is missing, a key of opts.Keys is empty, or
// opts.RouteBuckets is out of range.
//
// The driver also implements edge.BatchDriver: a batch is sent as one
// pipeline. It reports a lost subscription at edge.StageSubscribe once per
// outage, however many attempts the outage takes, and reports nothing when
// the subscription is back: the next outage is reported again.
func New(opts Options) edge.Sync {
	return func(inst edge.Instance) (edge.Driver, error) {
		if opts.Client == nil {
			return nil, errors.New("redissync: Options.Client is nil")
		}
		if opts.Channel == "" {
			return nil, errors.New("redissync: Options.Channel is empty")
		}
		if inst.ID == "" {
			return nil, errors.New("redissync: the instance has no ID")
		}
		if opts.RouteBuckets < 0 || opts.RouteBuckets > MaxRouteBuckets {
			return nil, fmt.Errorf("redissync: Options.RouteBuckets is %d, want 0 to %d", opts.RouteBuckets, MaxRouteBuckets)
		}
		signer, err := envelope.NewSigner(opts.Channel, opts.Keys)
		if err != nil {
			return nil, fmt.Errorf("redissync: Options.Keys: %w", err)
		}
		d := &driver{
			signer:   signer,
			client:   opts.Client,
			channel:  opts.Channel,
			maxBytes: opts.MaxMessageBytes,
			id:       inst.ID,
			report:   inst.Report,
			inbound:  inst.CountInbound,
			interval: defaultProbeInterval,
			timeout:  defaultProbeTimeout,
		}
		if d.maxBytes <= 0 {
			d.maxBytes = DefaultMaxMessageBytes
		}
		if d.report == nil {
			d.report = func(error, edge.Stage) {}
		}
		d.outage = reconnect.NewOutage(d.report)
		d.cluster, _ = opts.Client.(*redis.ClusterClient)
		d.echo = envelope.EchoPrefix(inst.ID)
		d.probe = probe.Prefix(inst.ID)
		d.listen = d.channel
		if opts.Routed {
			// The probes of a routed instance go to a channel of its own,
			// so that no instance receives another's.
			d.listen = d.channel + ":p:" + inst.ID
			d.routes = newRouter(d.channel, opts.RouteBuckets, opts.RouteLinger)
			return routedDriver{d}, nil
		}
		return d, nil
	}
}

// driver is the edge.BatchDriver of one instance.
type driver struct {
	signer   *envelope.Signer // nil: unsigned
	client   redis.UniversalClient
	cluster  *redis.ClusterClient // not nil: sharded pub/sub on a Redis Cluster
	channel  string
	listen   string  // the channel subscribed for probes, and in broadcast for every message
	routes   *router // nil: broadcast
	maxBytes int
	id       string
	report   func(error, edge.Stage)
	inbound  func(size int) // edge.Instance.CountInbound
	echo     string
	probe    string        // how the instance's own probes begin, up to their number
	interval time.Duration // see defaultProbeInterval
	timeout  time.Duration // see defaultProbeTimeout
	outage   *reconnect.Outage

	probes probe.State

	closed atomic.Bool
	bufs   sync.Pool // of *batchBuffer
	wg     sync.WaitGroup

	mu      sync.Mutex
	started bool
	stopped bool               // the loop is told to stop
	ps      *redis.PubSub      // the current subscription; nil once stopped
	shards  *shardSet          // on a Redis Cluster, the subscriptions
	cancel  context.CancelFunc // cancels the loop's context
}

var _ edge.BatchDriver = (*driver)(nil)

// batchBuffer holds encoded envelopes back to back: envelope i is
// buf[ends[i-1]:ends[i]].
type batchBuffer struct {
	buf  []byte
	ends []int
}

func (d *driver) getBuffer() *batchBuffer {
	if b, ok := d.bufs.Get().(*batchBuffer); ok {
		return b
	}
	return &batchBuffer{buf: make([]byte, 0, 512)}
}

func (d *driver) putBuffer(b *batchBuffer) {
	if cap(b.buf) > maxPooledBuffer {
		return
	}
	b.buf = b.buf[:0]
	b.ends = b.ends[:0]
	d.bufs.Put(b)
}

func (d *driver) errClosed(op string) error {
	return fmt.Errorf("redissync: %s: %w", op, edge.ErrClosed)
}

// Publish relays msg to the other instances with one PUBLISH.
func (d *driver) Publish(ctx context.Context, msg edge.Message) error {
	if d.closed.Load() {
		return d.errClosed("publish")
	}
	b := d.getBuffer()
	defer d.putBuffer(b)
	var err error
	b.buf, err = d.signer.AppendEncode(b.buf, d.id, msg)
	if err != nil {
		return fmt.Errorf("redissync: publish: %w", err)
	}
	channel := d.publishChannel(msg.Topic)
	var cmd *redis.IntCmd
	if d.cluster != nil {
		cmd = d.cluster.SPublish(ctx, channel, b.buf)
	} else {
		cmd = d.client.Publish(ctx, channel, b.buf)
	}
	if err := cmd.Err(); err != nil {
		d.reloadCluster(ctx)
		return fmt.Errorf("redissync: publish to %q: %w", channel, err)
	}
	return nil
}

// PublishBatch relays msgs to the other instances with one pipeline of
// PUBLISH commands: one round trip.
func (d *driver) PublishBatch(ctx context.Context, msgs []edge.Message) error {
	if d.closed.Load() {
		return d.errClosed("publish")
	}
	switch len(msgs) {
	case 0:
		return nil
	case 1:
		return d.Publish(ctx, msgs[0])
	}
	b := d.getBuffer()
	defer d.putBuffer(b)
	for _, msg := range msgs {
		var err error
		b.buf, err = d.signer.AppendEncode(b.buf, d.id, msg)
		if err != nil {
			return fmt.Errorf("redissync: publish: %w", err)
		}
		b.ends = append(b.ends, len(b.buf))
	}
	// The payloads are sliced only now that b.buf has stopped growing.
	_, err := d.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		start := 0
		for i, end := range b.ends {
			if d.cluster != nil {
				p.SPublish(ctx, d.publishChannel(msgs[i].Topic), b.buf[start:end:end])
			} else {
				p.Publish(ctx, d.publishChannel(msgs[i].Topic), b.buf[start:end:end])
			}
			start = end
		}
		return nil
	})
	if err != nil {
		d.reloadCluster(ctx)
		return fmt.Errorf("redissync: publish %d messages to %q: %w", len(msgs), d.channel, err)
	}
	return nil
}

// reloadCluster, on a Redis Cluster, has the client reload its slot map in
// the background after a publish failed: go-redis does not do so after
// every failure (a master that refuses connections), and until it does, it
// sends the slots of a master that failed over to the dead master.
func (d *driver) reloadCluster(ctx context.Context) {
	if d.cluster != nil {
		d.cluster.ReloadState(ctx)
	}
}

// publishChannel returns the channel a message of topic goes to: the
// cluster's channel, or in a routed cluster the topic's bucket channel.
func (d *driver) publishChannel(topic string) string {
	if d.routes == nil {
		return d.channel
	}
	return d.routes.bucketChannel(topic)
}

// Subscribe subscribes to the channel on a connection of its own and starts
// the loop that delivers what other instances publish. It returns nil once
// Redis has confirmed the subscription. When Redis cannot be reached it
// returns the error and keeps trying in the background until ctx is done or
// the driver is closed.
func (d *driver) Subscribe(ctx context.Context, deliver func(edge.Message)) error {
	if deliver == nil {
		return errors.New("redissync: subscribe: deliver is nil")
	}
	d.mu.Lock()
	if d.closed.Load() || d.stopped {
		d.mu.Unlock()
		return d.errClosed("subscribe")
	}
	if d.started {
		d.mu.Unlock()
		return errors.New("redissync: subscribe: called twice")
	}
	d.started = true
	loopCtx, cancel := context.WithCancel(ctx)
	d.cancel = cancel
	if d.cluster != nil {
		d.mu.Unlock()
		return d.subscribeSharded(ctx, loopCtx, deliver)
	}
	d.ps = d.client.Subscribe(loopCtx) // no channel yet: no network
	ps := d.ps
	d.wg.Add(3)
	if d.routes != nil {
		d.wg.Add(1)
	}
	d.mu.Unlock()

	// When ctx is done, stop the loop as Close does.
	go func() {
		defer d.wg.Done()
		<-loopCtx.Done()
		d.stop()
	}()
	// Dial and send SUBSCRIBE; the loop reads the confirmation.
	var err error
	if d.routes != nil {
		// The buckets routed so far go first: the confirmation of the
		// probe channel, which comes last, finds them subscribed.
		err = d.routes.subscribeFirst(loopCtx, ps, d.listen)
	} else {
		err = ps.Subscribe(loopCtx, d.listen)
	}
	first := make(chan error, 1)
	go d.loop(loopCtx, ps, deliver, first, err)
	go d.prober(loopCtx)
	if d.routes != nil {
		go func() {
			defer d.wg.Done()
			d.routes.run(loopCtx, d.applyRoutes)
		}()
		d.routes.wake() // for the routes the Hub set before Subscribe
	}
	select {
	case err := <-first:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// loop receives from the subscription until the driver stops. It is the
// only reader of the PubSub.
//
// go-redis reconnects a PubSub on its own: when a read fails, it closes the
// connection and at once dials a new one and sends SUBSCRIBE again; when that
// dial fails, the next ReceiveTimeout dials. So the loop does not subscribe
// again after such an error itself: it counts the subscription as lost at the
// first error, and waits between failing attempts so that an unreachable
// server is not dialled in a spin. What go-redis does not detect, a
// connection that is open but dead, the loop finds out on a fixed schedule,
// and replaces the PubSub: a SUBSCRIBE not confirmed within the timeout, a
// PING not answered within it (one is sent every interval), or a probe of
// the prober's that did not come back within it. Lateness is judged only
// when nothing is left to read, so that a backlog, which proves the
// connection alive, is never taken for a dead one. The outage ends once a
// probe, or a message of another instance, has come back through the new
// subscription, not at its confirmation: a subscription on a server that
// receives nothing (a failover that left it on the wrong one) is still the
// same outage.
func (d *driver) loop(ctx context.Context, ps *redis.PubSub, deliver func(edge.Message), first chan<- error, err error) {
	defer d.wg.Done()
	var (
		answered   bool      // Subscribe has been answered through first
		subscribed bool      // confirmed, and not lost since
		works      bool      // a probe came back through it: the outage is over
		everUp     bool      // confirmed once: later losses are reported
		dead       bool      // err is the loop's own finding: replace the PubSub
		idle       bool      // the last read found nothing to read
		asked      time.Time // when the subscription was last asked for
		pingAt     time.Time // when the unanswered PING was sent; zero when none is
		nextPing   time.Time
		backoff    = reconnect.Backoff{Min: minBackoff, Max: maxBackoff}
		scratch    []byte
	)
	defer func() {
		if !answered {
			first <- d.errClosed("subscribe")
		}
	}()
	// lost records that the subscription is down because of cause.
	lost := func(cause error) {
		switch {
		case !answered:
			first <- fmt.Errorf("redissync: subscribe to %q: %w", d.channel, cause)
			answered = true
		case everUp:
			// Before the first confirmation, the outage is the one
			// Subscribe returned.
			d.outage.Lost(fmt.Errorf("redissync: subscription to %q lost, subscribing again: %w", d.channel, cause))
		}
		subscribed, works, pingAt = false, false, time.Time{}
		d.probes.Down()
	}
	asked = time.Now()
	for {
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			lost(err)
			if !backoff.Wait(ctx) {
				return
			}
			if dead {
				if ps = d.renew(ctx); ps == nil {
					return
				}
			}
			err, dead, idle, asked = nil, false, false, time.Now()
		}
		now := time.Now()
		if idle {
			switch {
			case !subscribed && now.Sub(asked) > d.timeout:
				err = fmt.Errorf("no confirmation of SUBSCRIBE within %v", d.timeout)
			case subscribed && !pingAt.IsZero() && now.Sub(pingAt) > d.timeout:
				err = fmt.Errorf("no reply to PING within %v", d.timeout)
			case subscribed && d.probes.Overdue(now, d.timeout):
				err = fmt.Errorf("its own probe did not come back within %v", d.timeout)
			}
			if err != nil {
				dead = true // the connection is open but dead
				continue
			}
		}
		if subscribed && pingAt.IsZero() && !now.Before(nextPing) {
			if err = ps.Ping(ctx); err != nil {
				continue
			}
			pingAt, nextPing = now, now.Add(d.interval)
		}
		var v any
		v, err = ps.ReceiveTimeout(ctx, d.interval/4)
		idle = false
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if isTimeout(err) {
				err, idle = nil, true // time to check the connection again
			}
			continue
		}
		switch m := v.(type) {
		case *redis.Subscription:
			if m.Kind != "subscribe" || m.Channel != d.listen {
				continue
			}
		case *redis.Message:
			if m.Channel != d.listen && (d.routes == nil || !strings.HasPrefix(m.Channel, d.channel+":r:")) {
				continue
			}
			scratch = d.handle(m.Payload, deliver, scratch)
		case *redis.Pong:
			pingAt = time.Time{}
			continue
		default:
			continue
		}
		// A confirmation or a message: the subscription is in place.
		if !subscribed {
			subscribed, everUp = true, true
			d.probes.Up()
			nextPing = time.Now().Add(d.interval)
			if !answered {
				first <- nil
				answered = true
			}
		}
		if !works && d.probes.Answered() {
			works = true
			backoff.Reset()
			d.outage.Restored()
		}
	}
}

// renew replaces the subscription with a new PubSub, returning nil when the
// driver is stopping. It sends SUBSCRIBE on the new connection; when that
// fails, the next ReceiveTimeout dials again.
func (d *driver) renew(ctx context.Context) *redis.PubSub {
	var channels []string
	if d.routes != nil {
		// No bucket changes while the PubSub is replaced: the new one
		// subscribes every bucket subscribed now, before the probe
		// channel, whose confirmation then finds them subscribed.
		d.routes.subMu.Lock()
		defer d.routes.subMu.Unlock()
		channels = d.routes.subscribed()
	}
	channels = append(channels, d.listen)
	ps := d.client.Subscribe(ctx)
	d.mu.Lock()
	if d.stopped {
		d.mu.Unlock()
		_ = ps.Close()
		return nil
	}
	old := d.ps
	d.ps = ps
	d.mu.Unlock()
	_ = old.Close()
	_ = ps.Subscribe(ctx, channels...)
	return ps
}

// applyRoutes subscribes and unsubscribes bucket channels on the
// subscription of the moment, if the driver is not stopped.
//
// go-redis records the channels before it writes, and subscribes them again
// on a new connection: a write that fails here is made good by the
// reconnection that follows it.
func (d *driver) applyRoutes(ctx context.Context, sub, unsub []string) {
	ps := d.current()
	if ps == nil {
		return
	}
	if len(sub) > 0 {
		_ = ps.Subscribe(ctx, sub...)
	}
	if len(unsub) > 0 {
		_ = ps.Unsubscribe(ctx, unsub...)
	}
}

// current returns the subscription of the moment, nil once stopped.
func (d *driver) current() *redis.PubSub {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ps
}

// prober publishes a probe through the client's pool every interval while
// the subscription is up, one at a time, for the loop to expect back.
//
// go-redis honours a context's deadline only when the client enables
// context timeouts, so a PUBLISH on a dead connection may outlast it (by the
// client's ReadTimeout, or for ever when that is -1). The prober does not
// wait for it past its timeout, so that Close never hangs on a probe: the
// publish ends on its own goroutine, which holds nothing of the driver's.
func (d *driver) prober(ctx context.Context) {
	defer d.wg.Done()
	d.probes.Run(ctx, d.probe, d.interval, d.timeout, func(ctx context.Context, payload []byte) error {
		done := make(chan error, 1)
		payload = bytes.Clone(payload) // Run reuses its buffer
		go func() { done <- d.client.Publish(ctx, d.listen, payload).Err() }()
		select {
		case err := <-done:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}, nil)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// handle decodes one payload and delivers it unless it is the instance's own
// echo. It returns scratch, the buffer the payload is copied into, for the
// next call.
func (d *driver) handle(payload string, deliver func(edge.Message), scratch []byte) []byte {
	d.inbound(len(payload)) // every payload, before it is filtered
	if len(payload) > d.maxBytes {
		d.report(fmt.Errorf("redissync: dropped a %d-byte payload on %q: larger than MaxMessageBytes (%d)",
			len(payload), d.channel, d.maxBytes), edge.StageDelivery)
		return scratch
	}
	if d.echo != "" && strings.HasPrefix(payload, d.echo) {
		return scratch
	}
	if probe.Is(payload) {
		// Never delivered: one of ours is expected back.
		d.gotProbe(payload)
		return scratch
	}
	// Decode keeps nothing of its input: the copy is reused.
	scratch = append(scratch[:0], payload...)
	id, msg, err := d.signer.Decode(scratch)
	if err != nil {
		d.report(fmt.Errorf("redissync: dropped a payload on %q: %w", d.channel, err), edge.StageDelivery)
		return scratch
	}
	if id == d.id {
		return scratch
	}
	d.probes.Heard()
	if d.routes != nil && !d.routes.wants(msg.Topic) {
		return scratch // another topic of the bucket, or a lingering bucket
	}
	d.deliver(deliver, msg)
	return scratch
}

// gotProbe records that a probe of the instance came back: on a Redis
// Cluster, that of one of its shard subscriptions.
func (d *driver) gotProbe(payload string) {
	if n, ok := probe.Parse(payload, d.probe); ok {
		d.probes.Got(n)
		return
	}
	if d.cluster != nil {
		d.mu.Lock()
		s := d.shards
		d.mu.Unlock()
		if s != nil {
			s.gotProbe(payload)
		}
	}
}

// deliver calls the Hub's callback, which must not take the loop down.
func (d *driver) deliver(deliver func(edge.Message), msg edge.Message) {
	defer func() {
		if v := recover(); v != nil {
			d.report(&edge.PanicError{Value: v, Stack: debug.Stack()}, edge.StageDelivery)
		}
	}()
	deliver(msg)
}

// stop tells the loop to stop: it cancels the loop's context and closes the
// subscription, which interrupts a blocked read. It is idempotent.
func (d *driver) stop() {
	d.mu.Lock()
	d.stopped = true
	ps, cancel, shards := d.ps, d.cancel, d.shards
	d.ps = nil
	d.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	if shards != nil {
		shards.stop()
	}
	if ps != nil {
		_ = ps.Close()
	}
}

// Close stops the subscription loop, closes the subscription connection and
// waits for the loop to end. The user's client stays open. Close is
// idempotent; Publish after Close returns an error wrapping edge.ErrClosed.
func (d *driver) Close() error {
	d.closed.Store(true)
	d.stop()
	d.wg.Wait()
	return nil
}
