package natssync

import (
	"context"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/internal/routes"
)

// DefaultRouteLinger is how long a routed instance stays subscribed to a
// topic after its Hub stopped routing it, when Options.RouteLinger is zero.
const DefaultRouteLinger = 2 * time.Second

// routedDriver is the driver of a routed instance: it subscribes only to the
// subjects of the topics its Hub routes.
type routedDriver struct{ *driver }

var (
	_ edge.RoutedDriver = routedDriver{}
	_ edge.BatchDriver  = routedDriver{}
)

// Route records that topic is wanted, or no longer wanted, and tells the
// router, which subscribes or unsubscribes the topic's subject in the
// background. It never waits on the network.
func (d routedDriver) Route(topic string, want bool) {
	d.routes.route(topic, want)
}

// routeSub is one subscription of the router, with the count of messages it
// had dropped at the last check.
type routeSub struct {
	sub     *nats.Subscription
	dropped int
}

// router keeps the subscriptions of a routed instance: one per subject
// "<channel>.*.<topic token>" that a routed topic needs, counted by topic
// (topics whose names hash to one token share a subject), and the
// subscribed ones, which its goroutine brings in line with them.
type router struct {
	channel string
	signal  chan struct{}        // capacity 1: something changed
	settle  chan chan struct{}   // tests: a pass of the router, then a reply
	count   func(sub, unsub int) // tests: the subscriptions made and ended; may be nil
	clock   func() time.Time     // time.Now

	table *routes.Table[string] // the routed topics and their subjects

	subMu   sync.Mutex           // serializes changes of subbed
	subbed  map[string]*routeSub // the subscribed subjects; guarded by subMu
	handler nats.MsgHandler      // set by start; guarded by subMu
	stopped bool                 // no more subscriptions; guarded by subMu
}

func newRouter(channel string, linger time.Duration) *router {
	switch {
	case linger == 0:
		linger = DefaultRouteLinger
	case linger < 0:
		linger = 0
	}
	r := &router{
		channel: channel,
		signal:  make(chan struct{}, 1),
		settle:  make(chan chan struct{}),
		clock:   time.Now,
		subbed:  make(map[string]*routeSub),
	}
	r.table = routes.New(r.subjectFor, linger, func() time.Time { return r.clock() })
	return r
}

// subjectFor returns the subscription of topic: every namespace token,
// the namespace-wide "~" among them, and the topic's token.
func (r *router) subjectFor(topic string) string {
	return r.channel + ".*." + subjectToken(topic)
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

// wants reports whether topic is routed: a message of another topic whose
// name hashes to the same token, or of a subject still lingering, is
// dropped.
func (r *router) wants(topic string) bool {
	return r.table.Wants(topic)
}

// start subscribes the subjects routed so far on conn, each delivering to
// handler, which every later subscription uses too.
func (r *router) start(conn *nats.Conn, handler nats.MsgHandler) {
	r.subMu.Lock()
	r.handler = handler
	r.subMu.Unlock()
	r.pass(conn)
}

// run brings the subscriptions in line with the wanted subjects whenever a
// route changes or a linger ends, until ctx is done.
func (r *router) run(ctx context.Context, conn *nats.Conn) {
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
		if next, ok := r.pass(conn); ok {
			timer.Reset(next)
		}
		if reply != nil {
			close(reply)
			reply = nil
		}
	}
}

// pass subscribes the subjects that gained a topic, and unsubscribes those
// whose linger is over. It returns how long until the next linger ends, and
// whether one is pending.
//
// A subscription is made and ended in the connection's buffer: it does not
// wait for the server. While the connection is reconnecting, nats.go keeps
// it and sends every subscription again once it is back.
func (r *router) pass(conn *nats.Conn) (time.Duration, bool) {
	r.subMu.Lock()
	defer r.subMu.Unlock()
	if r.stopped || r.handler == nil {
		return 0, false
	}
	var sub []string
	var unsub []*nats.Subscription
	subscribe, release, next := r.table.Take(r.clock())
	for _, s := range subscribe {
		if _, ok := r.subbed[s]; !ok {
			sub = append(sub, s)
		}
	}
	for _, s := range release {
		if rs, ok := r.subbed[s]; ok {
			delete(r.subbed, s)
			unsub = append(unsub, rs.sub)
		}
	}
	made := 0
	for _, s := range sub {
		ns, err := conn.Subscribe(s, r.handler)
		if err != nil {
			// Only a closed or draining connection refuses a valid
			// subject; the watcher reports it.
			continue
		}
		r.subbed[s] = &routeSub{sub: ns}
		made++
	}
	for _, s := range unsub {
		_ = s.Unsubscribe() // fails only on a closed connection, which has dropped it
	}
	if r.count != nil && made+len(unsub) > 0 {
		r.count(made, len(unsub))
	}
	return next, next > 0
}

// dropped returns how many messages the subscriptions have lost to their
// pending limits (a slow consumer) since the last call.
func (r *router) dropped() int {
	r.subMu.Lock()
	defer r.subMu.Unlock()
	n := 0
	for _, rs := range r.subbed {
		if d, err := rs.sub.Dropped(); err == nil && d > rs.dropped {
			n += d - rs.dropped
			rs.dropped = d
		}
	}
	return n
}

// stop ends every subscription; no other is made after it.
func (r *router) stop() {
	r.subMu.Lock()
	defer r.subMu.Unlock()
	r.stopped = true
	for s, rs := range r.subbed {
		_ = rs.sub.Unsubscribe()
		delete(r.subbed, s)
	}
}
