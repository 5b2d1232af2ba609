package drivertest

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgesync/edgesync/edge"
)

// The benchmarks relay between two Hubs on one channel, each with a driver of
// its own, as two instances would: hub A, built first, publishes 100-byte
// text messages, and a member joined to hub B receives them.
const (
	benchNamespace = "/bench"
	benchTopic     = "bench"
	benchBodySize  = 100

	// relayWindow bounds how many messages BenchmarkRelay has published
	// that hub B has not received yet; it checks every relayStep
	// messages. So hub A's queue, of twice relayWindow, never overflows,
	// and a server buffers at most about 4 MB for hub B (clustersync's
	// relay, for one, disconnects a client that lags by 8 MiB).
	relayWindow = 1 << 14
	relayStep   = 1 << 10
)

// BenchmarkRelay measures how many 100-byte text messages per second one
// instance relays to another through the driver, and reports it as msgs/s.
// Hub A publishes b.N messages as fast as it can, never more than about
// 16,384 ahead of what hub B has received, and the clock stops when hub B's
// member has received them all. The bodies differ, as in real traffic
// (Postgres, for one, merges identical notifications of one transaction).
//
// newSync is called once for each hub, with a channel of the benchmark's
// own; RunDriverTests takes the same function. A message that is dropped or
// lost, or any error that a hub reports, fails the benchmark.
func BenchmarkRelay(b *testing.B, newSync func(tb testing.TB, channel string) edge.Sync) {
	a, hubB, logs := benchHubs(b, newSync, 2*relayWindow)
	got := &counter{reached: make(chan struct{}, 1)}
	benchJoin(b, hubB, got)
	msgs := make([]edge.Message, 4096)
	for i := range msgs {
		body := fmt.Sprintf("%04d%s", i, strings.Repeat("x", benchBodySize-4))
		msgs[i] = edge.Message{Namespace: benchNamespace, Topic: benchTopic, Data: edge.Text(body)}
	}
	ctx := context.Background()
	await := func(n int) {
		if !got.await(int64(n), bulkTimeout) {
			logs.dump(b)
			b.Fatalf("hub B received %d of %d messages within %v; hub A %+v, hub B %+v",
				got.n.Load(), n, bulkTimeout, a.Stats(), hubB.Stats())
		}
	}

	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if i%relayStep == 0 && i >= relayWindow {
			await(i - relayWindow)
		}
		if err := a.Publish(ctx, msgs[i%len(msgs)]); err != nil {
			b.Fatal(err)
		}
	}
	await(b.N)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	// Hub B may receive the last batch before hub A's call returns.
	benchFlush(b, a)
	logs.check(b)
}

// BenchmarkLatency measures the time from Publish on hub A to delivery to a
// member of hub B through the driver, at rate messages per second, and
// reports its median, 99th percentile and maximum as p50-µs, p99-µs and
// max-µs. It publishes b.N messages of 100 bytes: -benchtime 10000x at a
// rate of 5,000 runs for two seconds.
//
// newSync is called as BenchmarkRelay calls it. A message that is dropped or
// lost, or any error that a hub reports, fails the benchmark.
func BenchmarkLatency(b *testing.B, newSync func(tb testing.TB, channel string) edge.Sync, rate int) {
	if rate <= 0 {
		b.Fatalf("BenchmarkLatency: rate %d, want a positive number of messages per second", rate)
	}
	a, hubB, logs := benchHubs(b, newSync, 0)
	got := &latencies{base: time.Now(), want: b.N, done: make(chan struct{}), d: make([]time.Duration, 0, b.N)}
	benchJoin(b, hubB, got)
	ctx := context.Background()
	interval := time.Second / time.Duration(rate)

	b.ResetTimer()
	start := time.Now()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for i := range b.N {
		if wait := time.Until(start.Add(time.Duration(i) * interval)); wait > 0 {
			timer.Reset(wait)
			<-timer.C
		}
		// A 100-byte body that holds the time of the publish.
		body := strconv.FormatInt(int64(time.Since(got.base)), 10)
		body += strings.Repeat(".", benchBodySize-len(body))
		msg := edge.Message{Namespace: benchNamespace, Topic: benchTopic, Data: edge.Text(body)}
		if err := a.Publish(ctx, msg); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-got.done:
	case <-time.After(waitTimeout):
		logs.dump(b)
		b.Fatalf("hub B received %d of %d messages within %v; hub A %+v, hub B %+v",
			len(got.snapshot()), b.N, waitTimeout, a.Stats(), hubB.Stats())
	}
	b.StopTimer()
	d := got.snapshot()
	slices.Sort(d)
	pct := func(p float64) float64 { return float64(d[int(p*float64(len(d)-1))].Microseconds()) }
	b.ReportMetric(pct(0.50), "p50-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
	b.ReportMetric(pct(1), "max-µs")
	benchFlush(b, a)
	logs.check(b)
}

// benchHubs returns hub A and hub B on a channel of their own, A built first,
// each with an outbound queue of queueSize (0 for the default).
func benchHubs(b *testing.B, newSync func(tb testing.TB, channel string) edge.Sync, queueSize int) (a, hubB *edge.Hub, logs benchLogs) {
	b.Helper()
	ch := newChannel()
	a, logs.a = newHub(b, newSync, "hub A", ch, queueSize)
	hubB, logs.b = newHub(b, newSync, "hub B", ch, queueSize)
	return a, hubB, logs
}

// benchJoin joins ep to hub, subscribed to the benchmark's topic.
func benchJoin(b *testing.B, hub *edge.Hub, ep edge.Endpoint) {
	b.Helper()
	m, err := hub.Join(edge.NewID(), benchNamespace, ep)
	if err != nil {
		b.Fatalf("Join: %v", err)
	}
	if err := m.Subscribe(benchTopic); err != nil {
		b.Fatalf("Subscribe: %v", err)
	}
}

// benchFlush waits until hub A has handed every message to its driver, so
// that closing it cuts no call short.
func benchFlush(b *testing.B, hub *edge.Hub) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := hub.Flush(ctx); err != nil {
		b.Fatalf("hub A: Flush: %v", err)
	}
}

// benchLogs are what the two hubs of a benchmark report.
type benchLogs struct{ a, b *errorLog }

// check fails b if either hub reported an error.
func (l benchLogs) check(b *testing.B) {
	b.Helper()
	if n := l.a.count() + l.b.count(); n > 0 {
		l.dump(b)
		b.Errorf("the hubs reported %d errors", n)
	}
}

// dump logs what the hubs reported.
func (l benchLogs) dump(b *testing.B) {
	b.Helper()
	l.a.dump(b, "hub A")
	l.b.dump(b, "hub B")
}

// counter is an edge.Endpoint that counts deliveries.
type counter struct {
	n       atomic.Int64
	target  atomic.Int64
	reached chan struct{} // signalled when n reaches target
}

func (c *counter) Deliver(edge.Data) {
	if c.n.Add(1) == c.target.Load() {
		select {
		case c.reached <- struct{}{}:
		default:
		}
	}
}

func (c *counter) Close(int, string) error { return nil }

// await waits until n deliveries have been counted, and reports whether they
// were within timeout.
func (c *counter) await(n int64, timeout time.Duration) bool {
	c.target.Store(n)
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for c.n.Load() < n {
		select {
		case <-c.reached:
		case <-timer.C:
			return c.n.Load() >= n
		}
	}
	return true
}

// latencies is an edge.Endpoint that records how long each message took from
// its publish, whose time the body holds, to its delivery.
type latencies struct {
	base time.Time
	want int
	done chan struct{} // closed when want messages have been delivered

	mu sync.Mutex
	d  []time.Duration
}

func (l *latencies) Deliver(d edge.Data) {
	now := time.Since(l.base)
	sent, err := strconv.ParseInt(strings.TrimRight(string(d.Bytes), "."), 10, 64)
	if err != nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.d = append(l.d, now-time.Duration(sent))
	if len(l.d) == l.want {
		close(l.done)
	}
}

func (l *latencies) Close(int, string) error { return nil }

func (l *latencies) snapshot() []time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.d)
}
