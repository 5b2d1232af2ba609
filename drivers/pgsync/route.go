package pgsync

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/edgesync/edgesync/edge"
	routeset "github.com/edgesync/edgesync/internal/routes"
)

// Routing defaults and limits.
const (
	// DefaultRouteBuckets is the number of bucket channels of a routed
	// cluster when Options.RouteBuckets is zero.
	DefaultRouteBuckets = 1024

	// MaxRouteBuckets bounds Options.RouteBuckets.
	MaxRouteBuckets = 1 << 16

	// DefaultRouteLinger is how long a routed instance keeps LISTENing on
	// a bucket channel after its last topic there lost its last local
	// subscriber, when Options.RouteLinger is zero.
	DefaultRouteLinger = 2 * time.Second
)

// BucketChannel returns the Postgres notification channel of bucket of the
// routed cluster on channel: "es_", the first 8 bytes of the SHA-256 digest
// of channel in lower-case hex, "_" and the bucket number in decimal, as in
// "es_2c26b46b68ffc68f_17". It is at most 35 bytes long, whatever the length
// of channel, and LISTEN takes it quoted.
func BucketChannel(channel string, bucket int) string {
	return bucketPrefix(channel) + strconv.Itoa(bucket)
}

func bucketPrefix(channel string) string {
	sum := sha256.Sum256([]byte(channel))
	return "es_" + hex.EncodeToString(sum[:8]) + "_"
}

// TopicBucket returns the bucket of topic among buckets: the 32-bit FNV-1a
// hash of the topic's bytes modulo buckets.
func TopicBucket(topic string, buckets int) int {
	h := uint32(2166136261) // FNV-1a, 32 bits
	for i := 0; i < len(topic); i++ {
		h ^= uint32(topic[i])
		h *= 16777619
	}
	return int(h % uint32(buckets))
}

// routes is the routing state of a routed driver: the topics its Hub routes,
// the buckets they fall in, and the buckets that lost their last topic and
// linger. Route writes it; the listener reads it to LISTEN and UNLISTEN.
type routes struct {
	names []string      // the bucket channels, by bucket
	kick  chan struct{} // wakes the listener when the wanted buckets change
	// calls runs functions on the listening connection, for tests.
	calls chan func(context.Context, *pgx.Conn)
	table *routeset.Table[int] // the routed topics and their buckets
}

func newRoutes(channel string, buckets int, linger time.Duration) *routes {
	r := &routes{
		names: make([]string, buckets),
		kick:  make(chan struct{}, 1),
		calls: make(chan func(context.Context, *pgx.Conn)),
	}
	r.table = routeset.New(func(topic string) int { return TopicBucket(topic, buckets) }, linger, time.Now)
	prefix := bucketPrefix(channel)
	for i := range r.names {
		r.names[i] = prefix + strconv.Itoa(i)
	}
	return r
}

// channelOf returns the bucket channel of topic.
func (r *routes) channelOf(topic string) string {
	return r.names[TopicBucket(topic, len(r.names))]
}

// wants reports whether topic is routed.
func (r *routes) wants(topic string) bool {
	return r.table.Wants(topic)
}

// routedDriver is the driver of an instance of a routed cluster.
type routedDriver struct{ *driver }

var _ edge.RoutedDriver = routedDriver{}

// Route records that topic is wanted, or no longer, and wakes the listener
// when its bucket's channel must be LISTENed, or may be UNLISTENed once it
// has lingered. It never blocks.
func (rd routedDriver) Route(topic string, want bool) {
	r := rd.routes
	changed := r.table.Route(topic, want)
	if changed {
		select {
		case r.kick <- struct{}{}:
		default: // the listener is woken already
		}
	}
}

// listening is the set of buckets LISTENed on one listening connection. Only
// the listener uses it.
type listening map[int]struct{}

// apply LISTENs on conn on every wanted bucket that is not yet, and UNLISTENs
// every bucket that has lingered long enough since it lost its last topic. It
// returns when the next lingering bucket is due (zero: none).
func (d *driver) apply(ctx context.Context, conn *pgx.Conn, on listening) (due time.Time, err error) {
	r := d.routes
	var sql strings.Builder
	now := time.Now()
	for _, b := range r.table.All() {
		if _, ok := on[b]; !ok {
			on[b] = struct{}{}
			sql.WriteString("LISTEN " + pgx.Identifier{r.names[b]}.Sanitize() + ";")
		}
	}
	// Every wanted bucket is LISTENed above: only the released ones
	// matter, and only those this connection LISTENs on.
	_, release, next := r.table.Take(now)
	for _, b := range release {
		if _, ok := on[b]; ok {
			delete(on, b)
			sql.WriteString("UNLISTEN " + pgx.Identifier{r.names[b]}.Sanitize() + ";")
		}
	}
	if next > 0 {
		due = now.Add(next)
	}
	if sql.Len() == 0 {
		return due, nil
	}
	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	if _, err := conn.Exec(ctx, sql.String()); err != nil {
		return due, fmt.Errorf("LISTEN or UNLISTEN on the channels of its topics: %w", err)
	}
	d.routeChanges.Add(1)
	return due, nil
}

// wake cancels the listener's wait, through cancel, when the wanted buckets
// change or a test has a function to run on the listening connection. stop
// ends the watch and says whether it woke the listener, with the function to
// run, if any.
func (r *routes) wake(cancel context.CancelFunc) (stop func() (woken bool, call func(context.Context, *pgx.Conn))) {
	quit := make(chan struct{})
	type result struct {
		woken bool
		call  func(context.Context, *pgx.Conn)
	}
	done := make(chan result, 1)
	go func() {
		select {
		case <-r.kick:
			cancel()
			done <- result{woken: true}
		case call := <-r.calls:
			cancel()
			done <- result{woken: true, call: call}
		case <-quit:
			done <- result{}
		}
	}()
	return func() (bool, func(context.Context, *pgx.Conn)) {
		close(quit)
		res := <-done
		return res.woken, res.call
	}
}
