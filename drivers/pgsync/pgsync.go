package pgsync

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/envelope"
	"github.com/edgesync/edgesync/internal/probe"
	"github.com/edgesync/edgesync/internal/reconnect"
)

// Limits and defaults.
const (
	// MaxChannelLength is the longest channel name, in bytes: a Postgres
	// identifier (NAMEDATALEN-1).
	MaxChannelLength = 63

	// NotifyPayloadLimit is the size, in bytes, from which Postgres refuses
	// a NOTIFY payload. Envelopes this large travel through the table
	// edgesync_payloads.
	NotifyPayloadLimit = 8000

	// DefaultLargePayloadRetention is how long a stored large message may
	// be read when Options.LargePayloadRetention is zero.
	DefaultLargePayloadRetention = time.Minute

	// DefaultMaxMessageBytes bounds an envelope when Options.MaxMessageBytes
	// is zero: 1 MiB, as in every driver.
	DefaultMaxMessageBytes = envelope.DefaultMaxMessageBytes

	// ListenApplicationName is the application_name of the listening
	// connection, as pg_stat_activity shows it.
	ListenApplicationName = "edgesync-listen"
)

// Timing of the listening connection.
const (
	connectTimeout = 10 * time.Second       // one attempt to connect and LISTEN
	resolveTimeout = 10 * time.Second       // reading one large message
	minBackoff     = 50 * time.Millisecond  // first wait between reconnection attempts
	maxBackoff     = time.Second            // longest wait between reconnection attempts
	closeTimeout   = 500 * time.Millisecond // saying goodbye to the server on a closing connection
	probeInterval  = time.Second            // between two checks of the listening connection
	probeTimeout   = 2 * time.Second        // for a ping or a probe to come back
)

// Options configure the driver of one instance.
type Options struct {
	// Pool publishes. It stays the user's: the driver never closes it.
	// When ConnString is empty, the listening connection is also taken
	// out of Pool, for good (the pool opens another in its place).
	Pool *pgxpool.Pool

	// ConnString is a Postgres connection string (URL or key=value). The
	// listening connection is dialled with it. When Pool is nil, the
	// driver also publishes on a pool of its own built from it, closed
	// by Close. At least one of Pool and ConnString is required.
	ConnString string

	// Channel is the Postgres notification channel: every instance on it
	// sees the others' messages. Required; at most MaxChannelLength bytes.
	Channel string

	// LargePayloadRetention is how long a message too large for NOTIFY is
	// kept in the table edgesync_payloads for the receivers to read: a
	// receiver refuses a row older than that, and the publisher deletes
	// it soon after. Give every instance of a channel the same value. 0
	// means DefaultLargePayloadRetention.
	LargePayloadRetention time.Duration

	// MaxMessageBytes bounds the envelope of one message, in bytes. A
	// larger outbound message is not relayed (its Publish fails); a larger
	// inbound one is dropped and reported at edge.StageDelivery. 0 means
	// DefaultMaxMessageBytes. A large message's stored body is bounded
	// too: a receiver does not read a larger one.
	MaxMessageBytes int

	// Keys, when not empty, sign the cluster: the first key signs every
	// envelope and large message reference this instance publishes, and
	// an inbound one must be signed with one of them. One that is not is
	// dropped and reported at edge.StageDelivery with an error wrapping
	// envelope.ErrSignature: count them in the Hub's OnError with
	// errors.Is. Every instance of the channel needs the same keys. To
	// rotate, add the new key second on every instance, then make it
	// first, then remove the old one. A key should be at least 32 random
	// bytes; an empty key is an error. See envelope.Signer for the format.
	Keys [][]byte

	// Routed relays by topic: the driver is an edge.RoutedDriver, and an
	// instance LISTENs only on the bucket channels (see BucketChannel) of
	// the topics its Hub has subscribers for, so that it receives only
	// their messages. A message is notified on its topic's bucket channel,
	// whatever its namespace. Every instance of a channel must agree on
	// Routed and RouteBuckets. A crossws instance, which speaks broadcast
	// on the channel only, cannot join a routed cluster.
	Routed bool

	// RouteBuckets is the number of bucket channels topics are hashed
	// into (see TopicBucket) in a routed cluster: the most channels one
	// listening connection LISTENs on. Topics that share a bucket share
	// its notifications, and the receiver drops those of topics it does
	// not route. 0 means DefaultRouteBuckets; at most MaxRouteBuckets.
	RouteBuckets int

	// RouteLinger is how long a routed instance keeps LISTENing on a
	// bucket channel after its last routed topic there was unrouted, so
	// that topics whose subscribers come and go cost no UNLISTEN and
	// LISTEN each time. 0 means DefaultRouteLinger; a negative value
	// UNLISTENs at once.
	RouteLinger time.Duration
}

// New returns the Sync that builds the driver of one instance. Invalid
// options (no Pool nor ConnString, a bad connection string, an empty channel
// name or one longer than MaxChannelLength, RouteBuckets out of range) are
// returned by the Sync, and so by edge.New. The driver is an
// edge.RoutedDriver only when Options.Routed is set.
func New(opts Options) edge.Sync {
	return func(inst edge.Instance) (edge.Driver, error) {
		d, err := newDriver(opts, inst)
		if err != nil {
			return nil, err
		}
		if d.routes != nil {
			return routedDriver{d}, nil
		}
		return d, nil
	}
}

// driver is the edge.BatchDriver of one instance.
type driver struct {
	signer      *envelope.Signer // nil: unsigned
	inst        edge.Instance
	channel     string
	pool        *pgxpool.Pool
	ownPool     bool
	listenCfg   *pgx.ConnConfig // nil: the listening connection comes from pool
	listenSQL   string
	refPrefix   string // a large message's reference, up to its row id
	retention   time.Duration
	maxBytes    int
	seed        maphash.Seed
	ownPrefix   string        // how the envelopes of this instance begin
	probePeriod time.Duration // between two checks of the listening connection
	pings       atomic.Int64  // pings sent on the listening connection
	listens     atomic.Int64  // listening connections made
	scratch     sync.Pool     // of *batch
	rbuf        []byte        // the listener's copy of a payload

	// The large messages the listener has resolved, by row id, and when
	// they were last pruned.
	resolved       map[int64]resolved
	resolvedPruned time.Time

	tableMu        sync.Mutex
	tableReady     bool      // the table edgesync_payloads exists
	lastStored     time.Time // when this instance last stored a large message
	cleanupTimer   *time.Timer
	cleanupStopped bool // by Close
	cleanupRunning sync.WaitGroup
	cleanupCtx     context.Context
	cleanupCancel  context.CancelFunc
	onCleanup      func(deleted int64, err error) // for tests

	closed atomic.Bool
	mu     sync.Mutex
	cancel context.CancelFunc // stops the listener; nil before Subscribe
	done   chan struct{}      // closed when the listener has stopped

	// Liveness of the listening connection.
	probe   string        // how the probes of this instance begin
	timeout time.Duration // for a ping or a probe to come back
	probes  probe.State
	outage  *reconnect.Outage
	probing sync.WaitGroup // the prober

	// Routing, when the cluster is routed; nil: broadcast.
	routes       *routes
	routeChanges atomic.Int64 // LISTEN and UNLISTEN statements run
	on           listening    // the buckets of the listening connection; the listener's
}

var _ edge.BatchDriver = (*driver)(nil)

func newDriver(opts Options, inst edge.Instance) (*driver, error) {
	if err := checkChannel(opts.Channel); err != nil {
		return nil, err
	}
	if opts.Pool == nil && opts.ConnString == "" {
		return nil, errors.New("pgsync: Options needs a Pool or a ConnString")
	}
	signer, err := envelope.NewSigner(opts.Channel, opts.Keys)
	if err != nil {
		return nil, fmt.Errorf("pgsync: Options.Keys: %w", err)
	}
	if opts.RouteBuckets < 0 || opts.RouteBuckets > MaxRouteBuckets {
		return nil, fmt.Errorf("pgsync: Options.RouteBuckets is %d; want 0 (for %d) to %d",
			opts.RouteBuckets, DefaultRouteBuckets, MaxRouteBuckets)
	}
	d := &driver{
		signer:      signer,
		inst:        inst,
		channel:     opts.Channel,
		pool:        opts.Pool,
		listenSQL:   "SET application_name = '" + ListenApplicationName + "'; LISTEN " + pgx.Identifier{opts.Channel}.Sanitize(),
		retention:   opts.LargePayloadRetention,
		maxBytes:    opts.MaxMessageBytes,
		seed:        maphash.MakeSeed(),
		probePeriod: probeInterval,
	}
	d.probe, d.timeout = probe.Prefix(inst.ID), probeTimeout
	report := inst.Report
	if report == nil {
		report = func(error, edge.Stage) {}
	}
	d.outage = reconnect.NewOutage(report)
	if d.retention <= 0 {
		d.retention = DefaultLargePayloadRetention
	}
	if d.maxBytes <= 0 {
		d.maxBytes = DefaultMaxMessageBytes
	}
	if opts.Routed {
		buckets, linger := opts.RouteBuckets, opts.RouteLinger
		if buckets == 0 {
			buckets = DefaultRouteBuckets
		}
		switch {
		case linger == 0:
			linger = DefaultRouteLinger
		case linger < 0:
			linger = 0
		}
		d.routes = newRoutes(opts.Channel, buckets, linger)
	}
	d.cleanupCtx, d.cleanupCancel = context.WithCancel(context.Background())
	d.ownPrefix = envelope.EchoPrefix(inst.ID)
	d.refPrefix = `{"edgesync":"ref",` + d.ownPrefix[1:] + `"ref":`
	if opts.ConnString != "" {
		cfg, err := pgx.ParseConfig(opts.ConnString)
		if err != nil {
			return nil, fmt.Errorf("pgsync: ConnString: %w", err)
		}
		d.listenCfg = cfg
		if d.pool == nil {
			poolCfg, err := pgxpool.ParseConfig(opts.ConnString)
			if err != nil {
				return nil, fmt.Errorf("pgsync: ConnString: %w", err)
			}
			// NewWithConfig connects lazily: it fails only on a bad config.
			d.pool, err = pgxpool.NewWithConfig(context.Background(), poolCfg)
			if err != nil {
				return nil, fmt.Errorf("pgsync: creating a pool: %w", err)
			}
			d.ownPool = true
		}
	}
	return d, nil
}

// checkChannel validates a channel name.
func checkChannel(channel string) error {
	switch {
	case channel == "":
		return errors.New("pgsync: Options.Channel is required")
	case len(channel) > MaxChannelLength:
		return fmt.Errorf("pgsync: channel name %q is %d bytes long; a Postgres channel is an identifier of at most %d bytes",
			channel, len(channel), MaxChannelLength)
	case strings.IndexByte(channel, 0) >= 0:
		return fmt.Errorf("pgsync: channel name %q holds a NUL byte", channel)
	}
	return nil
}

// encode returns the envelope of msg, or an error when it is larger than
// MaxMessageBytes.
func (d *driver) encode(msg edge.Message) ([]byte, error) {
	env, err := d.signer.Encode(d.inst.ID, msg)
	if err != nil {
		return nil, fmt.Errorf("pgsync: encoding a message on topic %q: %w", msg.Topic, err)
	}
	if len(env) > d.maxBytes {
		return nil, tooLarge(msg, len(env), d.maxBytes)
	}
	return env, nil
}

func tooLarge(msg edge.Message, size, limit int) error {
	return fmt.Errorf("pgsync: message on topic %q not relayed: its envelope is %d bytes, more than MaxMessageBytes (%d)",
		msg.Topic, size, limit)
}

var errClosed = fmt.Errorf("pgsync: publish: %w", edge.ErrClosed)

// Publishing statements commit asynchronously (synchronous_commit off, for
// their own transaction only): a notification is not durable anyway, and
// Postgres serialises the commits of every notifying transaction of the
// cluster, so not waiting for the WAL flush there keeps the lock short.
const (
	asyncCommit = "set_config('synchronous_commit', 'off', true)"
	notifySQL   = "SELECT pg_notify($1, $2) FROM " + asyncCommit
)

// Publish relays msg to the other instances on the channel.
func (d *driver) Publish(ctx context.Context, msg edge.Message) error {
	if d.closed.Load() {
		return errClosed
	}
	env, err := d.encode(msg)
	if err != nil {
		return err
	}
	to := d.channelOf(msg.Topic)
	if len(env) >= NotifyPayloadLimit {
		return d.publish(ctx, nil, nil, [][]byte{env}, []string{to})
	}
	if _, err := d.pool.Exec(ctx, notifySQL, to, env); err != nil {
		d.publishFailed(err)
		return fmt.Errorf("pgsync: publish to channel %q: %w", to, err)
	}
	return nil
}

// channelOf returns the notification channel of a message on topic: the
// channel, or in a routed cluster the topic's bucket channel.
func (d *driver) channelOf(topic string) string {
	if d.routes == nil {
		return d.channel
	}
	return d.routes.channelOf(topic)
}

// PublishBatch relays msgs to the other instances on the channel in one
// round trip. A message that cannot be relayed does not keep the others
// from being relayed; the error names every failure.
func (d *driver) PublishBatch(ctx context.Context, msgs []edge.Message) error {
	if d.closed.Load() {
		return errClosed
	}
	b, _ := d.scratch.Get().(*batch)
	if b == nil {
		b = &batch{seen: make(map[uint64]int)}
	}
	defer d.scratch.Put(b)
	defer b.reset()

	var errs []error
	for _, msg := range msgs {
		start := len(b.buf)
		to := d.channelOf(msg.Topic)
		b.buf, _ = d.signer.AppendEncode(b.buf, d.inst.ID, msg) // never fails
		env := b.buf[start:]
		switch {
		case len(env) > d.maxBytes:
			errs = append(errs, tooLarge(msg, len(env), d.maxBytes))
			b.buf = b.buf[:start]
			continue
		case len(env) >= NotifyPayloadLimit:
			b.large = append(b.large, bytes.Clone(env))
			b.largeTo = append(b.largeTo, to)
			b.buf = b.buf[:start]
			continue
		}
		if len(msgs) > 1 {
			// Postgres delivers identical notifications of one
			// transaction once: make repeats distinct. A hash
			// collision marks a message that needed no mark, which is
			// harmless.
			h := maphash.Bytes(d.seed, env)
			if n := b.seen[h]; n > 0 {
				// Write {"dup":n,…the envelope without its '{',
				// signed again.
				b.buf = fmt.Appendf(b.buf[:start], `{"dup":%d,`, n)
				brace := len(b.buf)
				b.buf, _ = envelope.AppendEncode(b.buf, d.inst.ID, msg)
				b.buf = b.buf[:brace+copy(b.buf[brace:], b.buf[brace+1:])]
				b.buf, _ = d.signer.Sign(b.buf, start)
			}
			b.seen[h]++
			if marked := b.buf[start:]; len(marked) >= NotifyPayloadLimit {
				// The mark made it too large for NOTIFY.
				b.large = append(b.large, bytes.Clone(marked))
				b.largeTo = append(b.largeTo, to)
				b.buf = b.buf[:start]
				continue
			}
		}
		b.ends = append(b.ends, len(b.buf))
		b.smallTo = append(b.smallTo, to)
	}
	start := 0
	for _, end := range b.ends {
		b.small = append(b.small, b.buf[start:end])
		start = end
	}
	if err := d.publish(ctx, b.small, b.smallTo, b.large, b.largeTo); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// batch is the scratch space of PublishBatch, reused from one call to the
// next: the envelopes of the small messages, back to back in buf.
type batch struct {
	buf   []byte
	ends  []int    // where each envelope ends in buf
	small [][]byte // the envelopes, slices of buf
	large [][]byte
	seen  map[uint64]int // envelope hash → how many times met

	// The notification channel of each small and large envelope.
	smallTo, largeTo []string
}

// maxKeptBatch bounds the scratch space kept for the next batch, in bytes.
const maxKeptBatch = 1 << 20

func (b *batch) reset() {
	if cap(b.buf) > maxKeptBatch {
		b.buf = nil
	}
	b.buf = b.buf[:0]
	b.ends = b.ends[:0]
	clear(b.small)
	b.small = b.small[:0]
	clear(b.large)
	b.large = b.large[:0]
	clear(b.seen)
	clear(b.smallTo)
	b.smallTo = b.smallTo[:0]
	clear(b.largeTo)
	b.largeTo = b.largeTo[:0]
}

// notifyManySQL notifies the payloads $2 on channel $1; notifyRoutedSQL
// notifies each payload of $2 on its own channel, in $1.
const (
	notifyManySQL   = "SELECT pg_notify($1, p) FROM " + asyncCommit + ", unnest($2::text[]) AS p"
	notifyRoutedSQL = "SELECT pg_notify(c, p) FROM " + asyncCommit + ", unnest($1::text[], $2::text[]) AS m(c, p)"
)

// queueSmall queues in b the notification of the small envelopes, each on
// its channel in to.
func (d *driver) queueSmall(b *pgx.Batch, small [][]byte, to []string) {
	switch {
	case len(small) == 0:
	case len(small) == 1:
		b.Queue(notifySQL, to[0], small[0])
	case d.routes == nil:
		b.Queue(notifyManySQL, d.channel, small)
	default:
		b.Queue(notifyRoutedSQL, to, small)
	}
}

// publish sends the small envelopes as notifications and stores the large
// ones, in one round trip (two when the payload table must be created first).
// smallTo and largeTo name the notification channel of each envelope.
func (d *driver) publish(ctx context.Context, small [][]byte, smallTo []string, large [][]byte, largeTo []string) error {
	var errs []error
	if len(large) > 0 {
		if err := d.ensureTable(ctx, len(large[0])); err != nil {
			errs = append(errs, err)
			large = nil
		}
	}
	var err error
	switch {
	case len(large) == 0 && len(small) == 0:
	case len(large) == 0 && len(small) == 1:
		_, err = d.pool.Exec(ctx, notifySQL, smallTo[0], small[0])
	case len(large) == 0 && d.routes == nil:
		_, err = d.pool.Exec(ctx, notifyManySQL, d.channel, small)
	case len(large) == 0:
		_, err = d.pool.Exec(ctx, notifyRoutedSQL, smallTo, small)
	default:
		b := &pgx.Batch{}
		d.queueSmall(b, small, smallTo)
		if err = d.queueLarge(ctx, b, large, largeTo); err == nil {
			err = d.pool.SendBatch(ctx, b).Close()
		}
		if err != nil {
			err = explainLarge(err, "storing it", len(large[0]), false)
		} else {
			d.scheduleCleanup()
		}
	}
	if err != nil {
		d.publishFailed(err)
		what := "a message"
		if n := len(small) + len(large); n > 1 {
			what = fmt.Sprint(n, " messages")
		}
		errs = append(errs, fmt.Errorf("pgsync: publish %s to channel %q: %w", what, d.channel, err))
	}
	return errors.Join(errs...)
}

// Subscribe LISTENs on the channel and delivers what the other instances
// publish until ctx is done or Close is called.
func (d *driver) Subscribe(ctx context.Context, deliver func(edge.Message)) error {
	d.mu.Lock()
	if d.closed.Load() {
		d.mu.Unlock()
		return fmt.Errorf("pgsync: subscribe: %w", edge.ErrClosed)
	}
	if d.done != nil {
		d.mu.Unlock()
		return errors.New("pgsync: Subscribe called twice")
	}
	ctx, cancel := context.WithCancel(ctx)
	d.cancel = cancel
	d.done = make(chan struct{})
	d.probing.Add(1) // under d.mu, before a Close can Wait
	d.mu.Unlock()

	conn, err := d.connect(ctx)
	go d.run(ctx, conn, deliver)
	go func() {
		defer d.probing.Done()
		d.prober(ctx)
	}()
	if err != nil {
		return fmt.Errorf("pgsync: listen on channel %q (retrying in the background): %w", d.channel, err)
	}
	return nil
}

// Close stops listening and closes the pool the driver created, if any. The
// user's pool stays open.
func (d *driver) Close() error {
	d.mu.Lock()
	if d.closed.Swap(true) {
		d.mu.Unlock()
		return nil
	}
	cancel, done := d.cancel, d.done
	d.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
		d.probing.Wait()
	}
	d.stopCleanup()
	if d.ownPool {
		d.pool.Close()
	}
	return nil
}
