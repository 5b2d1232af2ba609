package redissync_test

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgesync/edgesync/drivers/redissync"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/internal/testenv"
)

// counter is an edge.Endpoint that counts deliveries and signals when the
// count reaches a target.
type counter struct {
	n       atomic.Int64
	target  atomic.Int64
	reached chan struct{}
}

func newCounter() *counter { return &counter{reached: make(chan struct{}, 1)} }

func (c *counter) Deliver(edge.Data) {
	if c.n.Add(1) == c.target.Load() {
		select {
		case c.reached <- struct{}{}:
		default:
		}
	}
}

func (c *counter) Close(int, string) error { return nil }

// waitFor waits until n deliveries have been counted, or until none has
// come for idle. It returns the count.
func (c *counter) waitFor(n int64, idle time.Duration) int64 {
	c.target.Store(n)
	timer := time.NewTimer(idle)
	defer timer.Stop()
	last := c.n.Load()
	for last < n {
		select {
		case <-c.reached:
		case <-timer.C:
			now := c.n.Load()
			if now == last {
				return now
			}
			last = now
			timer.Reset(idle)
			continue
		}
		last = c.n.Load()
	}
	return last
}

// benchHubs returns hub A and hub B relaying through Redis on one channel,
// each with a client of its own, as two instances would have.
func benchHubs(b *testing.B, queue int) (a, bHub *edge.Hub, errs *atomic.Int64) {
	b.Helper()
	channel := testenv.Channel(b)
	errs = new(atomic.Int64)
	onError := func(err error, info edge.ErrorInfo) {
		if errs.Add(1) == 1 {
			b.Logf("reported at %s: %v", info.Stage, err)
		}
	}
	hubs := make([]*edge.Hub, 2)
	for i := range hubs {
		h, err := edge.New(edge.Options{
			Sync:      redissync.New(redissync.Options{Client: newClient(b), Channel: channel}),
			OnError:   onError,
			QueueSize: queue,
			MaxBatch:  512,
		})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { h.Close() })
		hubs[i] = h
	}
	return hubs[0], hubs[1], errs
}

// BenchmarkRelay measures how many 100-byte text messages per second hub A
// relays to a member of hub B through Redis. A publishes as fast as it can,
// never more than window messages ahead of B, so that neither A's queue nor
// Redis's output buffer for B overflows.
func BenchmarkRelay(b *testing.B) {
	const (
		window = 1 << 16
		step   = 4096
	)
	a, bHub, errs := benchHubs(b, 2*window)
	got := newCounter()
	m, err := bHub.Join(edge.NewID(), "/bench", got)
	if err != nil {
		b.Fatal(err)
	}
	if err := m.Subscribe("relay"); err != nil {
		b.Fatal(err)
	}
	msg := edge.Message{Namespace: "/bench", Topic: "relay", Data: edge.Text(strings.Repeat("x", 100))}
	ctx := context.Background()

	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := 1; i <= b.N; i++ {
		if err := a.Publish(ctx, msg); err != nil {
			b.Fatal(err)
		}
		if i%step == 0 && i > window {
			got.waitFor(int64(i-window), 5*time.Second)
		}
	}
	n := got.waitFor(int64(b.N), 5*time.Second)
	elapsed := time.Since(start)
	b.StopTimer()

	b.ReportMetric(float64(n)/elapsed.Seconds(), "msgs/s")
	if lost := int64(b.N) - n; lost > 0 {
		b.ReportMetric(float64(lost), "lost")
	}
	if n := errs.Load(); n > 0 {
		b.ReportMetric(float64(n), "errors")
	}
}

// latencies is an edge.Endpoint that records how long each message took
// from its publish, written in the message, to its delivery.
type latencies struct {
	base time.Time
	mu   sync.Mutex
	d    []time.Duration
	want int
	done chan struct{}
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

// BenchmarkLatency measures the time from Publish on hub A to delivery to a
// member of hub B, at 5,000 messages per second: b.N messages, so
// -benchtime=10000x runs for two seconds.
func BenchmarkLatency(b *testing.B) {
	const rate = 5000
	a, bHub, errs := benchHubs(b, 0)
	got := &latencies{base: time.Now(), want: b.N, done: make(chan struct{}), d: make([]time.Duration, 0, b.N)}
	m, err := bHub.Join(edge.NewID(), "/bench", got)
	if err != nil {
		b.Fatal(err)
	}
	if err := m.Subscribe("latency"); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	const interval = time.Second / rate

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
		body += strings.Repeat(".", 100-len(body))
		if err := a.Publish(ctx, edge.Message{Namespace: "/bench", Topic: "latency", Data: edge.Text(body)}); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-got.done:
	case <-time.After(10 * time.Second):
	}
	b.StopTimer()

	got.mu.Lock()
	d := slices.Clone(got.d)
	got.mu.Unlock()
	if len(d) == 0 {
		b.Fatal("nothing was delivered")
	}
	slices.Sort(d)
	pct := func(p float64) float64 { return float64(d[int(p*float64(len(d)-1))].Microseconds()) }
	b.ReportMetric(pct(0.50), "p50-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
	b.ReportMetric(pct(1), "max-µs")
	if lost := b.N - len(d); lost > 0 {
		b.ReportMetric(float64(lost), "lost")
	}
	if n := errs.Load(); n > 0 {
		b.ReportMetric(float64(n), "errors")
	}
}
