package redissync

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgesync/edgesync/edge"
)

// NewWithProbeTiming is New with another probe interval and timeout.
func NewWithProbeTiming(opts Options, interval, timeout time.Duration) edge.Sync {
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

// Counts returns how many bucket channels the driver has subscribed and
// unsubscribed so far.
func (p *RouteProbe) Counts() (subscribes, unsubscribes int64) {
	return p.subs.Load(), p.unsubs.Load()
}

// Subscribed returns how many bucket channels the driver holds subscribed.
func (p *RouteProbe) Subscribed() int {
	p.mu.Lock()
	r := p.d.routes
	p.mu.Unlock()
	r.subMu.Lock()
	defer r.subMu.Unlock()
	return len(r.subbed)
}

// Settle waits until the router has made a pass after every Route call made
// so far: what it does for them has been sent to Redis.
func (p *RouteProbe) Settle() {
	p.mu.Lock()
	r := p.d.routes
	p.mu.Unlock()
	reply := make(chan struct{})
	r.settle <- reply
	<-reply
}

// BucketChannel returns the bucket channel of topic under opts.
func BucketChannel(opts Options, topic string) string {
	return newRouter(opts.Channel, opts.RouteBuckets, opts.RouteLinger).bucketChannel(topic)
}
