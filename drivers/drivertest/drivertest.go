// Package drivertest is the conformance suite that every edgesync driver and
// every edge.Registry passes, and the benchmarks that every driver runs. A
// driver's package runs them from tests of its own, so that third-party
// drivers are held to the same contract and measured the same way:
//
//	func newSync(tb testing.TB, channel string) edge.Sync {
//		return mydriver.New(mydriver.Options{Client: client, Channel: channel})
//	}
//
//	func TestConformance(t *testing.T) { drivertest.RunDriverTests(t, newSync) }
//	func BenchmarkRelay(b *testing.B)   { drivertest.BenchmarkRelay(b, newSync) }
//	func BenchmarkLatency(b *testing.B) { drivertest.BenchmarkLatency(b, newSync, 5000) }
//
// The cases assert what a Hub relies on: the contract of edge.Driver and of
// edge.Registry. Every case picks its own random channel name, connection ids
// and topics, so a shared server or a shared registry serves them all. The
// suite never sleeps: it waits for deliveries on channels, with a deadline.
package drivertest

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgesync/edgesync/edge"
)

// Deadlines of the suite. They are generous: a case that meets one has
// failed, and a case that works never waits for one. They are variables only
// so that the suite's own tests can fail faster.
var (
	waitTimeout = 10 * time.Second // one delivery, one publish
	bulkTimeout = 30 * time.Second // the concurrent publishing case
)

// RunDriverTests runs the driver conformance cases. newSync returns the Sync
// of one more instance on the named channel; every call yields an independent
// instance. Not to be called from a parallel test (one case counts
// goroutines).
//
// The cases check that a publish reaches every other instance once and never
// its publisher, both ways; that bodies arrive byte for byte and keep their
// kind, with their namespace and topic; that another channel never bridges;
// that PublishBatch, when the driver has it, delivers every message; that
// publishes from many goroutines through a real Hub lose nothing; that a
// driver that is never subscribed, alone and in a publish-only Hub
// (edge.Options.PublishOnly), relays out what it publishes, singly and in
// batches, receives nothing, and releases every goroutine on Close; that
// deliver is never called once Close has returned; that Close releases every
// goroutine, may be called twice, and makes Publish fail; that
// Instance.Report is never given a nil error; and that every payload an
// instance receives is counted through Instance.Inbound, at its size or more
// (an envelope is larger than the body it carries).
//
// Clients that newSync shares between instances (a Redis client, a pool) are
// best made before RunDriverTests is called: one case checks that no more
// goroutines run once its drivers are closed than before they were built.
func RunDriverTests(t *testing.T, newSync func(tb testing.TB, channel string) edge.Sync) {
	t.Helper()
	s := &driverSuite{newSync: newSync}
	t.Run("PublishReachesEveryOtherInstanceButNotItself", s.testFanOut)
	t.Run("RelayIsBidirectional", s.testBidirectional)
	t.Run("DataSurvives", s.testData)
	t.Run("NamespaceAndTopicSurvive", s.testAddress)
	t.Run("ForeignChannelDoesNotBridge", s.testForeignChannel)
	t.Run("PublishBatchDeliversEveryMessage", s.testPublishBatch)
	t.Run("ConcurrentHubPublishesLoseNothing", s.testConcurrentHub)
	t.Run("PublishOnlyInstanceRelaysOut", s.testPublishOnly)
	t.Run("NoDeliveryAfterClose", s.testNoDeliveryAfterClose)
	t.Run("CloseReleasesEverything", s.testCloseReleases)
	t.Run("InboundCountsWhatArrives", s.testInboundCounted)
}

type driverSuite struct {
	newSync func(tb testing.TB, channel string) edge.Sync
}

// newChannel returns a channel name no other case uses, short enough for
// any backend (a Postgres channel name is at most 63 bytes).
func newChannel() string {
	return "drivertest-" + strings.ReplaceAll(edge.NewID(), "-", "")[:16]
}

// instance is one driver built directly, as a Hub would build it, with
// everything it delivers and reports recorded.
type instance struct {
	name   string
	id     string
	driver edge.Driver
	inbox  inbox
	ctx    context.Context // the lifetime a Hub gives Subscribe
	cancel context.CancelFunc

	closeOnce sync.Once
	closeErr  error
	closed    atomic.Bool  // set once Close has returned
	late      atomic.Int64 // deliveries after Close returned
	nilErrs   atomic.Int64 // Report calls with a nil error

	inboundMsgs, inboundBytes atomic.Int64 // counted through Instance.Inbound

	mu      sync.Mutex
	reports []string
}

// newInstance builds and subscribes one instance on channel. It is closed
// when t ends; its cleanup then checks that the driver kept the contract.
func (s *driverSuite) newInstance(t *testing.T, name, channel string) *instance {
	t.Helper()
	in := s.newPublisher(t, name, channel)
	subCtx, subCancel := context.WithTimeout(context.Background(), waitTimeout)
	defer subCancel()
	// Subscribe is given the instance's lifetime context, as a Hub gives
	// it; subCtx only bounds the call in case the driver blocks on it.
	errc := make(chan error, 1)
	go func() { errc <- callSubscribe(in.ctx, in.driver, in.deliver) }()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("%s: Subscribe: %v", name, err)
		}
	case <-subCtx.Done():
		t.Fatalf("%s: Subscribe did not return within %v", name, waitTimeout)
	}
	return in
}

// newPublisher builds one instance on channel and does not subscribe it, as
// a publish-only Hub builds its driver. It is closed when t ends; its
// cleanup then checks that the driver kept the contract.
func (s *driverSuite) newPublisher(t *testing.T, name, channel string) *instance {
	t.Helper()
	in := &instance{name: name, id: edge.NewID()}
	in.inbox.init()
	newDriver := s.newSync(t, channel)
	if newDriver == nil {
		t.Fatalf("%s: newSync returned a nil Sync", name)
	}
	d, err := buildDriver(newDriver, edge.Instance{ID: in.id, Report: in.report, Inbound: in.inbound})
	if err != nil {
		t.Fatalf("%s: building the driver: %v", name, err)
	}
	if d == nil {
		t.Fatalf("%s: the Sync returned a nil Driver and no error", name)
	}
	in.driver = d
	in.ctx, in.cancel = context.WithCancel(context.Background())
	t.Cleanup(func() {
		// The Hub's order: cancel the Subscribe context, then Close.
		in.cancel()
		if err := in.close(); err != nil {
			t.Errorf("%s: Close: %v", name, err)
		}
		in.check(t)
	})
	return in
}

func buildDriver(newDriver edge.Sync, inst edge.Instance) (d edge.Driver, err error) {
	defer recoverInto(&err, "Sync")
	return newDriver(inst)
}

func callSubscribe(ctx context.Context, d edge.Driver, deliver func(edge.Message)) (err error) {
	defer recoverInto(&err, "Subscribe")
	return d.Subscribe(ctx, deliver)
}

func recoverInto(err *error, what string) {
	if v := recover(); v != nil {
		*err = fmt.Errorf("%s panicked: %v", what, v)
	}
}

// deliver is the callback given to Subscribe. It never blocks and never
// touches a testing.T: it may run after the test has ended.
func (in *instance) deliver(msg edge.Message) {
	if in.closed.Load() {
		in.late.Add(1)
		return
	}
	in.inbox.add(msg)
}

// report is the instance's Instance.Report.
func (in *instance) report(err error, stage edge.Stage) {
	if err == nil {
		in.nilErrs.Add(1)
		return
	}
	in.mu.Lock()
	in.reports = append(in.reports, fmt.Sprintf("%s: %v", stage, err))
	in.mu.Unlock()
}

// inbound is the instance's Instance.Inbound.
func (in *instance) inbound(size int) {
	in.inboundMsgs.Add(1)
	in.inboundBytes.Add(int64(size))
}

// close closes the driver once and records that Close has returned.
func (in *instance) close() error {
	in.closeOnce.Do(func() {
		in.closeErr = func() (err error) {
			defer recoverInto(&err, "Close")
			return in.driver.Close()
		}()
		in.closed.Store(true)
	})
	return in.closeErr
}

// check reports what the instance saw that breaks the contract.
func (in *instance) check(t *testing.T) {
	t.Helper()
	if n := in.nilErrs.Load(); n > 0 {
		t.Errorf("%s: Instance.Report was called %d times with a nil error", in.name, n)
	}
	if n := in.late.Load(); n > 0 {
		t.Errorf("%s: deliver was called %d times after Close returned", in.name, n)
	}
	if t.Failed() {
		in.mu.Lock()
		defer in.mu.Unlock()
		for _, r := range in.reports {
			t.Logf("%s reported %s", in.name, r)
		}
	}
}

// publish publishes msg through the instance's driver, failing t on error.
func (in *instance) publish(t *testing.T, msg edge.Message) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := in.driver.Publish(ctx, msg); err != nil {
		t.Fatalf("%s: Publish: %v", in.name, err)
	}
}

// inbox records the messages an instance or an endpoint receives.
type inbox struct {
	mu     sync.Mutex
	msgs   []edge.Message
	notify chan struct{} // signalled after every add
}

func (b *inbox) init() { b.notify = make(chan struct{}, 1) }

func (b *inbox) add(msg edge.Message) {
	b.mu.Lock()
	b.msgs = append(b.msgs, msg)
	b.mu.Unlock()
	select {
	case b.notify <- struct{}{}:
	default:
	}
}

func (b *inbox) snapshot() []edge.Message {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]edge.Message(nil), b.msgs...)
}

// waitFor waits until done holds for the messages received so far, failing
// t after timeout.
func (b *inbox) waitFor(t *testing.T, timeout time.Duration, what string, done func([]edge.Message) bool) []edge.Message {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		msgs := b.snapshot()
		if done(msgs) {
			return msgs
		}
		select {
		case <-b.notify:
		case <-timer.C:
			t.Fatalf("timed out after %v waiting for %s; received %d messages:\n%s", timeout, what, len(msgs), describe(msgs))
		}
	}
}

// waitText waits until a message with the text body text arrives and returns it.
func (b *inbox) waitText(t *testing.T, who, text string) edge.Message {
	t.Helper()
	var found edge.Message
	b.waitFor(t, waitTimeout, fmt.Sprintf("%s to receive %q", who, text), func(msgs []edge.Message) bool {
		for _, m := range msgs {
			if string(m.Data.Bytes) == text {
				found = m
				return true
			}
		}
		return false
	})
	return found
}

// hasText reports whether a message with body text was received.
func (b *inbox) hasText(text string) bool {
	for _, m := range b.snapshot() {
		if string(m.Data.Bytes) == text {
			return true
		}
	}
	return false
}

func describe(msgs []edge.Message) string {
	const limit = 20
	var sb strings.Builder
	for i, m := range msgs {
		if i == limit {
			fmt.Fprintf(&sb, "\t… and %d more\n", len(msgs)-limit)
			break
		}
		fmt.Fprintf(&sb, "\t%s\n", formatMessage(m))
	}
	return sb.String()
}

func formatMessage(m edge.Message) string {
	body := fmt.Sprintf("%q", m.Data.Bytes)
	if len(body) > 80 {
		body = body[:77] + "…"
	}
	return fmt.Sprintf("{namespace %q topic %q binary %v data %s (%d bytes)}", m.Namespace, m.Topic, m.Data.Binary, body, len(m.Data.Bytes))
}

// textMessage returns a text message on topic whose body no other message has.
func textMessage(namespace, topic, label string) edge.Message {
	return edge.Message{Namespace: namespace, Topic: topic, Data: edge.Text(label + "-" + edge.NewID())}
}
