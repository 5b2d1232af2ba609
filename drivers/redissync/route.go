package redissync

import (
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/internal/routes"
)

// Defaults of the routed mode.
const (
	// DefaultRouteBuckets is the number of bucket channels topics are
	// hashed into when Options.RouteBuckets is zero.
	DefaultRouteBuckets = 4096
	// DefaultRouteLinger is how long a bucket channel stays subscribed
	// after its last topic went away, when Options.RouteLinger is zero.
	DefaultRouteLinger = 2 * time.Second
	// MaxRouteBuckets is the largest Options.RouteBuckets.
	MaxRouteBuckets = 1 << 20
)

// routedDriver is the driver of a routed instance: it receives only the
// bucket channels of the topics its Hub routes.
type routedDriver struct{ *driver }

var (
	_ edge.RoutedDriver = routedDriver{}
	_ edge.BatchDriver  = routedDriver{}
)

// Route records that topic is wanted, or no longer wanted, and tells the
// router, which subscribes or unsubscribes the topic's bucket channel in the
// background. It never waits on the network.
func (d routedDriver) Route(topic string, want bool) {
	d.routes.route(topic, want)
}

// router keeps the bucket channels of a routed instance: the wanted ones,
// counted by topic, and the subscribed ones, which its goroutine brings in
// line with them.
type router struct {
	channel string // the cluster's channel; buckets are channel:r:<n>
	buckets uint32
	signal  chan struct{}        // capacity 1: something changed
	settle  chan chan struct{}   // tests: a pass of the router, then a reply
	count   func(sub, unsub int) // tests: the commands sent, by bucket; may be nil
	clock   func() time.Time     // time.Now

	table *routes.Table[uint32] // the routed topics and their buckets

	subMu  sync.Mutex          // serializes commands on the subscription, and renewals
	subbed map[uint32]struct{} // the subscribed buckets; guarded by subMu
}

func newRouter(channel string, buckets int, linger time.Duration) *router {
	if buckets <= 0 {
		buckets = DefaultRouteBuckets
	}
	switch {
	case linger == 0:
		linger = DefaultRouteLinger
	case linger < 0:
		linger = 0
	}
	r := &router{
		channel: channel,
		buckets: uint32(buckets),
		signal:  make(chan struct{}, 1),
		settle:  make(chan chan struct{}),
		clock:   time.Now,
		subbed:  make(map[uint32]struct{}),
	}
	r.table = routes.New(r.bucket, linger, func() time.Time { return r.clock() })
	return r
}

// name returns the Redis channel of bucket b.
func (r *router) name(b uint32) string {
	return r.channel + ":r:" + strconv.FormatUint(uint64(b), 10)
}

// bucket returns the bucket of topic: FNV-1a of the topic, modulo the
// number of buckets.
func (r *router) bucket(topic string) uint32 {
	h := uint32(2166136261) // FNV-1a, 32 bits
	for i := 0; i < len(topic); i++ {
		h ^= uint32(topic[i])
		h *= 16777619
	}
	return h % r.buckets
}

// bucketChannel returns the Redis channel of topic's bucket.
func (r *router) bucketChannel(topic string) string {
	return r.name(r.bucket(topic))
}

// route records topic as wanted or not, and signals the router.
func (r *router) route(topic string, want bool) {
	r.table.Route(topic, want)
	r.wake()
}

// wake signals the router.
func (r *router) wake() {
	select {
	case r.signal <- struct{}{}:
	default:
	}
}

// wants reports whether topic is routed: a message of another topic that
// shares its bucket, or of a bucket still lingering, is dropped.
func (r *router) wants(topic string) bool {
	return r.table.Wants(topic)
}

// run brings the subscribed buckets in line with the wanted ones whenever a
// route changes or a linger ends, until ctx is done. apply sends the
// changes: the bucket channels to subscribe and those to unsubscribe.
func (r *router) run(ctx context.Context, apply func(ctx context.Context, sub, unsub []string)) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var reply chan struct{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.signal:
		case <-timer.C:
		case reply = <-r.settle:
		}
		if next, ok := r.pass(ctx, apply); ok {
			timer.Reset(next)
		}
		if reply != nil {
			close(reply)
			reply = nil
		}
	}
}

// pass subscribes the buckets that gained a topic, and unsubscribes those
// whose linger is over. It returns how long until the next linger ends,
// and whether one is pending.
func (r *router) pass(ctx context.Context, apply func(ctx context.Context, sub, unsub []string)) (time.Duration, bool) {
	r.subMu.Lock()
	defer r.subMu.Unlock()
	var sub, unsub []string
	subscribe, release, next := r.table.Take(r.clock())
	pending := next > 0
	for _, b := range subscribe {
		if _, ok := r.subbed[b]; !ok {
			r.subbed[b] = struct{}{}
			sub = append(sub, r.name(b))
		}
	}
	for _, b := range release {
		if _, ok := r.subbed[b]; ok {
			delete(r.subbed, b)
			unsub = append(unsub, r.name(b))
		}
	}
	if len(sub)+len(unsub) == 0 {
		return next, pending
	}
	apply(ctx, sub, unsub)
	if r.count != nil {
		r.count(len(sub), len(unsub))
	}
	return next, pending
}

// subscribeFirst sends the first SUBSCRIBE of ps: the buckets routed so far,
// then listen.
// subMu is held until SUBSCRIBE is sent, so that no change of routes goes
// out on ps before it.
func (r *router) subscribeFirst(ctx context.Context, ps *redis.PubSub, listen string) error {
	r.subMu.Lock()
	defer r.subMu.Unlock()
	return ps.Subscribe(ctx, append(r.takeFirstLocked(), listen)...)
}

// subscribed returns the bucket channels subscribed now. subMu is held.
func (r *router) subscribed() []string {
	out := make([]string, 0, len(r.subbed))
	for b := range r.subbed {
		out = append(out, r.name(b))
	}
	return out
}

// takeFirst marks the buckets routed so far as subscribed and returns their
// channels, for the first subscription (subscribeFirst, or one per shard on
// a Redis Cluster).
func (r *router) takeFirst() []string {
	r.subMu.Lock()
	defer r.subMu.Unlock()
	return r.takeFirstLocked()
}

// takeFirstLocked is takeFirst with subMu held.
func (r *router) takeFirstLocked() []string {
	var channels []string
	// Nothing is subscribed yet: what lingers has nothing to release.
	subscribe, _, _ := r.table.Take(r.clock())
	for _, b := range subscribe {
		r.subbed[b] = struct{}{}
		channels = append(channels, r.name(b))
	}
	if r.count != nil {
		r.count(len(channels), 0)
	}
	return channels
}
