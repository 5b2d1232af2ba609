package natssync

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgesync/edgesync/edge"
)

// NewWithCheckTiming is New with another interval and timeout of the
// connection check.
func NewWithCheckTiming(opts Options, interval, timeout time.Duration) edge.Sync {
	sync := New(opts)
	return func(inst edge.Instance) (edge.Driver, error) {
		d, err := sync(inst)
		if err == nil {
			unwrap(d).interval = interval
			unwrap(d).timeout = timeout
		}
		return d, err
	}
}

// Subject is the subject of a message to topic in namespace on channel.
func Subject(channel, namespace, topic string) string { return subject(channel, namespace, topic) }

// unwrap returns the driver of a broadcast or routed instance.
func unwrap(d edge.Driver) *driver {
	if rd, ok := d.(routedDriver); ok {
		return rd.driver
	}
	return d.(*driver)
}

// RouteProbe sees into the routed driver a Sync of NewRoutedForTest built.
type RouteProbe struct {
	mu     sync.Mutex
	d      *driver
	subs   atomic.Int64
	unsubs atomic.Int64
}

// NewRoutedForTest is New with opts.Routed set, whose driver p sees into.
func NewRoutedForTest(opts Options) (s edge.Sync, p *RouteProbe) {
	opts.Routed = true
	sync := New(opts)
	p = &RouteProbe{}
	return func(inst edge.Instance) (edge.Driver, error) {
		d, err := sync(inst)
		if err == nil {
			rd := d.(routedDriver)
			rd.routes.count = func(sub, unsub int) {
				p.subs.Add(int64(sub))
				p.unsubs.Add(int64(unsub))
			}
			p.mu.Lock()
			p.d = rd.driver
			p.mu.Unlock()
		}
		return d, err
	}, p
}

// Counts returns how many subscriptions the router has made and ended so
// far.
func (p *RouteProbe) Counts() (subscribes, unsubscribes int64) {
	return p.subs.Load(), p.unsubs.Load()
}

// Subscribed returns the subjects the driver holds subscribed.
func (p *RouteProbe) Subscribed() []string {
	p.mu.Lock()
	r := p.d.routes
	p.mu.Unlock()
	r.subMu.Lock()
	defer r.subMu.Unlock()
	out := make([]string, 0, len(r.subbed))
	for s := range r.subbed {
		out = append(out, s)
	}
	return out
}

// Settle waits until the router has made a pass after every Route call made
// so far: what it does for them is in the connection's buffer.
func (p *RouteProbe) Settle() {
	p.mu.Lock()
	r := p.d.routes
	p.mu.Unlock()
	reply := make(chan struct{})
	r.settle <- reply
	<-reply
}

// RouteSubject is the subscription of a routed instance for topic.
func RouteSubject(channel, topic string) string {
	return newRouter(channel, 0).subjectFor(topic)
}
