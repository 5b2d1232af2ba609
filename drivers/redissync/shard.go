package redissync

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/internal/probe"
	"github.com/edgesync/edgesync/internal/reconnect"
)

// maxProbeTags bounds the search for a probe channel that hashes to a slot
// of a given master. With M masters, about M tags are tried.
const maxProbeTags = 1 << 14

// shardSet is the subscription side of a driver on a Redis Cluster: one
// subscription per shard master that holds wanted channels (the cluster's
// channel in broadcast, the routed buckets in a routed cluster), each
// SSUBSCRIBEd on the master that owns its slot.
//
// A shard subscription that fails (its connection errs, its PING or probe
// does not come back, or the server unsubscribes its probe channel) is
// dropped whole: its channels wait to be placed again, and the placer,
// after a backoff, asks the cluster client to reload the slot map and
// subscribes them on their owners of the moment. A channel that the server
// alone unsubscribes (its slot moved) is placed again by itself. The other
// shards go on untouched.
//
// go-redis resubscribes a PubSub after a network error on its own, but in
// one SSUBSCRIBE of every channel, which Redis refuses when the channels
// lie in several slots (CROSSSLOT), and on the address it had, which after
// a failover is no longer a master. So a shard never relies on it: it is
// replaced as soon as it errs.
type shardSet struct {
	d       *driver
	cc      *redis.ClusterClient
	deliver func(edge.Message)
	wake    chan struct{} // capacity 1: channels wait to be placed
	failed  atomic.Bool   // a shard failed, or placing did: back off before placing again
	reset   atomic.Bool   // every shard works again: the backoff starts over

	mu      sync.Mutex
	stopped bool
	shards  map[string]*shard // by the address of their master
	owner   map[string]*shard // by wanted channel; nil while it waits to be placed
	movedAt map[string]moved  // channels the server unsubscribed, until placed elsewhere
	seq     int               // numbers the shards, for their probe ids
	first   chan<- error      // Subscribe's answer; nil once given
	quiet   bool              // Subscribe returned the outage's error: no report until it ends

	pmu    sync.Mutex
	probed map[string]*shard // by probe id suffix (the shard's number)
}

// moved is where and when the server unsubscribed a channel because its
// slot moved.
type moved struct {
	addr string
	at   time.Time
}

// shard is the subscription on one master.
type shard struct {
	set     *shardSet
	addr    string
	ps      *redis.PubSub
	probeCh string // a channel of the instance's own, in a slot of the master
	num     string // the shard's number, in its probe id
	prefix  string // how the shard's probes begin, up to their number
	probes  probe.State
	ctx     context.Context // done when the shard is dropped
	cancel  context.CancelFunc

	// guarded by set.mu
	channels  map[string]struct{}
	failed    bool
	confirmed bool // the probe channel's SSUBSCRIBE was confirmed
	works     bool // a probe came back through it
}

// subscribeSharded is Subscribe on a Redis Cluster: the first subscriptions
// are placed, and the placer and, in a routed cluster, the router run in
// the background. d.mu is not held; d.started is set.
func (d *driver) subscribeSharded(ctx, loopCtx context.Context, deliver func(edge.Message)) error {
	first := make(chan error, 1)
	s := &shardSet{
		d:       d,
		cc:      d.cluster,
		deliver: deliver,
		wake:    make(chan struct{}, 1),
		shards:  make(map[string]*shard),
		owner:   make(map[string]*shard),
		movedAt: make(map[string]moved),
		first:   first,
		probed:  make(map[string]*shard),
	}
	var initial []string
	if d.routes != nil {
		initial = d.routes.takeFirst()
	} else {
		initial = []string{d.channel}
	}
	for _, ch := range initial {
		s.owner[ch] = nil
	}
	d.mu.Lock()
	if d.stopped {
		d.mu.Unlock()
		return d.errClosed("subscribe")
	}
	d.shards = s
	d.wg.Add(2)
	if d.routes != nil {
		d.wg.Add(1)
	}
	d.mu.Unlock()

	// When ctx is done, stop as Close does.
	go func() {
		defer d.wg.Done()
		<-loopCtx.Done()
		d.stop()
	}()
	go s.run(loopCtx)
	if d.routes != nil {
		go func() {
			defer d.wg.Done()
			d.routes.run(loopCtx, s.update)
		}()
		d.routes.wake() // for the routes the Hub set before Subscribe
	}
	if len(initial) == 0 {
		// Nothing to subscribe yet: check that the cluster answers.
		err := d.cluster.Ping(ctx).Err()
		s.mu.Lock()
		if s.first != nil {
			s.first = nil
			// A failure returned here is the outage's report.
			s.quiet = err != nil
		}
		s.mu.Unlock()
		if err != nil {
			return fmt.Errorf("redissync: subscribe to %q: %w", d.channel, err)
		}
		return nil
	}
	s.signal()
	select {
	case err := <-first:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// signal wakes the placer.
func (s *shardSet) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// run is the placer: whenever channels wait to be placed, it subscribes
// them on the masters of their slots, backing off after a failure, until
// ctx is done.
func (s *shardSet) run(ctx context.Context) {
	defer s.d.wg.Done()
	backoff := reconnect.Backoff{Min: minBackoff, Max: maxBackoff}
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		}
		if s.reset.Swap(false) {
			backoff.Reset()
		}
		if s.failed.Swap(false) {
			s.cc.ReloadState(ctx)
			if !backoff.Wait(ctx) {
				return
			}
		}
		if err := s.place(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			s.lost(err)
			s.failed.Store(true)
			s.signal()
		}
	}
}

// place subscribes every channel that waits on the master of its slot,
// making a shard subscription for a master that has none.
func (s *shardSet) place(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return nil
	}
	groups := make(map[string][]string) // by master address
	nodes := make(map[string]*redis.Client)
	var firstErr error
	for ch, sh := range s.owner {
		if sh != nil {
			continue
		}
		node, err := s.cc.MasterForKey(ctx, ch)
		if err != nil {
			firstErr = cmpErr(firstErr, fmt.Errorf("finding the master of %q: %w", ch, err))
			continue
		}
		addr := node.Options().Addr
		if m, ok := s.movedAt[ch]; ok && m.addr == addr && time.Since(m.at) < 2*s.d.timeout {
			// The client's slot map is older than the move: an
			// SSUBSCRIBE there would be refused with MOVED, and fail
			// the whole shard.
			firstErr = cmpErr(firstErr, fmt.Errorf("the slot map still gives %q to %s, which unsubscribed it", ch, addr))
			continue
		}
		groups[addr] = append(groups[addr], ch)
		nodes[addr] = node
	}
	for addr, channels := range groups {
		slices.Sort(channels)
		sh := s.shards[addr]
		fresh := sh == nil
		if fresh {
			var err error
			if sh, err = s.newShard(ctx, addr, nodes[addr]); err != nil {
				firstErr = cmpErr(firstErr, err)
				continue
			}
		}
		// One SSUBSCRIBE per channel: Redis takes the channels of one
		// slot only in a command. A fresh shard's probe channel goes
		// last, so that its confirmation finds every channel before it
		// subscribed.
		var err error
		for _, ch := range channels {
			if err = sh.ps.SSubscribe(ctx, ch); err != nil {
				break
			}
			sh.channels[ch] = struct{}{}
			s.owner[ch] = sh
			delete(s.movedAt, ch)
		}
		if err == nil && fresh {
			err = sh.ps.SSubscribe(ctx, sh.probeCh)
		}
		if err != nil {
			err = fmt.Errorf("SSUBSCRIBE on %s: %w", addr, err)
			firstErr = cmpErr(firstErr, err)
			if fresh {
				for ch := range sh.channels {
					s.owner[ch] = nil
				}
				sh.cancel()
				_ = sh.ps.Close()
				s.forget(sh)
			} else {
				s.failLocked(sh)
			}
			continue
		}
		if fresh {
			s.shards[addr] = sh
			s.start(sh)
		}
	}
	s.checkLocked()
	return firstErr
}

// cmpErr returns first, or err when first is nil.
func cmpErr(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

// newShard makes the subscription of the master at addr, whose client is
// node, without a network round trip but for the search of its probe
// channel in the client's slot map. s.mu is held.
func (s *shardSet) newShard(ctx context.Context, addr string, node *redis.Client) (*shard, error) {
	d := s.d
	// The probe channel is of the instance's own and hashes, by its hash
	// tag, to a slot of this master: "{<tag>}<channel>:p:<id>".
	var probeCh string
	for i := range maxProbeTags {
		name := "{" + strconv.Itoa(i) + "}" + d.channel + ":p:" + d.id
		m, err := s.cc.MasterForKey(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("finding the master of %q: %w", name, err)
		}
		if m.Options().Addr == addr {
			probeCh = name
			break
		}
	}
	if probeCh == "" {
		return nil, fmt.Errorf("no probe channel hashes to a slot of %s", addr)
	}
	s.seq++
	num := strconv.Itoa(s.seq)
	shCtx, cancel := context.WithCancel(ctx)
	sh := &shard{
		set:      s,
		ctx:      shCtx,
		addr:     addr,
		ps:       node.SSubscribe(ctx), // no channel yet: no network
		probeCh:  probeCh,
		num:      num,
		prefix:   probe.Prefix(d.id + "/" + num),
		cancel:   cancel,
		channels: make(map[string]struct{}),
	}
	s.pmu.Lock()
	s.probed[num] = sh
	s.pmu.Unlock()
	return sh, nil
}

// start runs the loop and the prober of sh. s.mu is held.
func (s *shardSet) start(sh *shard) {
	s.d.wg.Add(2)
	go sh.loop(sh.ctx)
	go sh.prober(sh.ctx)
}

// forget takes sh out of the probe index.
func (s *shardSet) forget(sh *shard) {
	s.pmu.Lock()
	if s.probed[sh.num] == sh {
		delete(s.probed, sh.num)
	}
	s.pmu.Unlock()
}

// update is the router's apply: it adds the bucket channels of sub to those
// waiting to be placed, and unsubscribes those of unsub; a shard left with
// no channel is closed.
func (s *shardSet) update(ctx context.Context, sub, unsub []string) {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return
	}
	waiting := false
	for _, ch := range sub {
		if _, ok := s.owner[ch]; !ok {
			s.owner[ch] = nil
			waiting = true
		}
	}
	for _, ch := range unsub {
		sh, ok := s.owner[ch]
		if !ok {
			continue
		}
		delete(s.owner, ch)
		delete(s.movedAt, ch)
		if sh == nil {
			continue
		}
		delete(sh.channels, ch)
		if len(sh.channels) == 0 {
			s.retireLocked(sh)
			continue
		}
		// A failed write fails the shard, whose loop finds it out.
		_ = sh.ps.SUnsubscribe(ctx, ch)
	}
	s.checkLocked()
	s.mu.Unlock()
	if waiting {
		s.signal()
	}
}

// retireLocked closes sh, which holds no wanted channel. s.mu is held.
func (s *shardSet) retireLocked(sh *shard) {
	sh.failed = true // its loop ends without a report
	if s.shards[sh.addr] == sh {
		delete(s.shards, sh.addr)
	}
	sh.cancel()
	_ = sh.ps.Close()
	s.forget(sh)
}

// fail drops sh after cause: its channels wait to be placed again, and the
// loss is reported, once per outage.
func (s *shardSet) fail(sh *shard, cause error) {
	s.mu.Lock()
	if sh.failed || s.stopped {
		s.mu.Unlock()
		return
	}
	s.failLocked(sh)
	s.mu.Unlock()
	s.lost(fmt.Errorf("on %s: %w", sh.addr, cause))
	s.signal()
}

// failLocked is fail without the report. s.mu is held.
func (s *shardSet) failLocked(sh *shard) {
	for ch := range sh.channels {
		if s.owner[ch] == sh {
			s.owner[ch] = nil
		}
	}
	sh.channels = map[string]struct{}{}
	s.retireLocked(sh)
	s.failed.Store(true)
}

// moved records that the server unsubscribed ch from sh on its own (its
// slot moved): it is placed again, on its new master.
func (s *shardSet) moved(sh *shard, ch string) {
	if ch == sh.probeCh {
		s.fail(sh, fmt.Errorf("the server unsubscribed its probe channel %q (its slot moved)", ch))
		return
	}
	s.mu.Lock()
	if _, ok := sh.channels[ch]; !ok || sh.failed || s.stopped {
		// An answer to our own SUNSUBSCRIBE.
		s.mu.Unlock()
		return
	}
	delete(sh.channels, ch)
	s.owner[ch] = nil
	s.movedAt[ch] = moved{addr: sh.addr, at: time.Now()}
	s.failed.Store(true)
	s.mu.Unlock()
	s.lost(fmt.Errorf("on %s: the server unsubscribed %q (its slot moved)", sh.addr, ch))
	s.signal()
}

// lost records a loss because of cause: it answers Subscribe when it has
// not been answered, and otherwise reports the outage, once.
func (s *shardSet) lost(cause error) {
	s.mu.Lock()
	first, quiet := s.first, s.quiet
	if first != nil {
		s.first = nil
		s.quiet = true
	}
	s.mu.Unlock()
	switch {
	case first != nil:
		first <- fmt.Errorf("redissync: subscribe to %q: %w", s.d.channel, cause)
	case !quiet:
		s.d.outage.Lost(fmt.Errorf("redissync: subscription to %q lost, subscribing again: %w", s.d.channel, cause))
	}
}

// checkLocked answers Subscribe once every channel is placed and every
// shard confirmed, and ends the outage once, besides, every shard works.
// s.mu is held.
func (s *shardSet) checkLocked() {
	for _, sh := range s.owner {
		if sh == nil {
			return
		}
	}
	works := true
	for _, sh := range s.shards {
		if !sh.confirmed {
			return
		}
		works = works && sh.works
	}
	if s.first != nil {
		s.first <- nil
		s.first = nil
	}
	if works {
		s.quiet = false
		s.reset.Store(true)
		s.d.outage.Restored()
	}
}

// gotProbe records that a probe of one of the shards came back.
func (s *shardSet) gotProbe(payload string) {
	for _, sh := range s.probing() {
		if n, ok := probe.Parse(payload, sh.prefix); ok {
			sh.probes.Got(n)
			return
		}
	}
}

// probing returns the shards whose probes may come back.
func (s *shardSet) probing() []*shard {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	out := make([]*shard, 0, len(s.probed))
	for _, sh := range s.probed {
		out = append(out, sh)
	}
	return out
}

// stop closes every shard subscription, and answers Subscribe if it has not
// been answered. The goroutines end on their own; Close waits for them.
func (s *shardSet) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopped = true
	for _, sh := range s.shards {
		sh.failed = true
		sh.cancel()
		_ = sh.ps.Close()
	}
	clear(s.shards)
	if s.first != nil {
		s.first <- s.d.errClosed("subscribe")
		s.first = nil
	}
}

// loop receives from the shard's subscription until it fails or the driver
// stops. It judges the connection as the driver's loop does (see loop): a
// confirmation not received, a PING not answered or a probe not back within
// the timeout fail the shard, and so does any error of the connection.
func (sh *shard) loop(ctx context.Context) {
	s, d := sh.set, sh.set.d
	defer d.wg.Done()
	var (
		subscribed bool
		works      bool
		idle       bool
		asked      = time.Now()
		pingAt     time.Time
		nextPing   time.Time
		scratch    []byte
	)
	broadcast := d.routes == nil
	buckets := d.channel + ":r:"
	for {
		now := time.Now()
		var err error
		if idle {
			switch {
			case !subscribed && now.Sub(asked) > d.timeout:
				err = fmt.Errorf("no confirmation of SSUBSCRIBE within %v", d.timeout)
			case subscribed && !pingAt.IsZero() && now.Sub(pingAt) > d.timeout:
				err = fmt.Errorf("no reply to PING within %v", d.timeout)
			case subscribed && sh.probes.Overdue(now, d.timeout):
				err = fmt.Errorf("its own probe did not come back within %v", d.timeout)
			}
			if err != nil {
				sh.probes.Down()
				s.fail(sh, err)
				return
			}
		}
		if subscribed && pingAt.IsZero() && !now.Before(nextPing) {
			if err := sh.ps.Ping(ctx); err != nil {
				if ctx.Err() == nil {
					sh.probes.Down()
					s.fail(sh, err)
				}
				return
			}
			pingAt, nextPing = now, now.Add(d.interval)
		}
		v, err := sh.ps.ReceiveTimeout(ctx, d.interval/4)
		idle = false
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if isTimeout(err) {
				idle = true
				continue
			}
			sh.probes.Down()
			s.fail(sh, err)
			return
		}
		switch m := v.(type) {
		case *redis.Subscription:
			switch {
			case m.Kind == "sunsubscribe":
				s.moved(sh, m.Channel)
				continue
			case m.Kind != "ssubscribe" || m.Channel != sh.probeCh:
				continue
			}
		case *redis.Message:
			switch {
			case m.Channel == sh.probeCh:
			case broadcast && m.Channel == d.channel:
			case !broadcast && strings.HasPrefix(m.Channel, buckets):
			default:
				continue
			}
			scratch = d.handle(m.Payload, s.deliver, scratch)
		case *redis.Pong:
			pingAt = time.Time{}
			continue
		default:
			continue
		}
		if !subscribed {
			subscribed = true
			sh.probes.Up()
			nextPing = time.Now().Add(d.interval)
			s.mu.Lock()
			sh.confirmed = true
			s.checkLocked()
			s.mu.Unlock()
		}
		if !works && sh.probes.Answered() {
			works = true
			s.mu.Lock()
			sh.works = true
			s.checkLocked()
			s.mu.Unlock()
		}
	}
}

// prober publishes the shard's probes to its probe channel through the
// cluster client, which sends them to the master of the channel's slot as
// the client knows it: a probe that does not come back shows a subscription
// on a server that no longer receives the slot. See driver.prober for why
// it does not wait on a publish past its timeout.
func (sh *shard) prober(ctx context.Context) {
	d := sh.set.d
	defer d.wg.Done()
	sh.probes.Run(ctx, sh.prefix, d.interval, d.timeout, func(ctx context.Context, payload []byte) error {
		done := make(chan error, 1)
		payload = bytes.Clone(payload)
		go func() { done <- sh.set.cc.SPublish(ctx, sh.probeCh, payload).Err() }()
		select {
		case err := <-done:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}, nil)
}
