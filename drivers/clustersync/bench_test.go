package clustersync

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgesync/edgesync/edge"
)

// countEndpoint counts deliveries and signals when a wanted count is reached.
type countEndpoint struct {
	n       atomic.Int64
	want    atomic.Int64
	reached chan struct{}
}

func (e *countEndpoint) Deliver(edge.Data) {
	if e.n.Add(1) == e.want.Load() {
		select {
		case e.reached <- struct{}{}:
		default:
		}
	}
}

func (e *countEndpoint) Close(int, string) error { return nil }

// waitFor waits until n messages have been delivered.
func (e *countEndpoint) waitFor(b *testing.B, n int64) {
	select {
	case <-e.reached:
	default:
	}
	e.want.Store(n)
	timer := time.NewTimer(waitTimeout)
	defer timer.Stop()
	for e.n.Load() < n {
		select {
		case <-e.reached:
		case <-timer.C:
			b.Fatalf("%d of %d messages delivered after %v", e.n.Load(), n, waitTimeout)
		}
	}
}

// BenchmarkRelay measures how many 100-byte text messages per second go from
// one hub to another through a clustersync relay: hub A relays, hub B is its
// client. At most window messages are in flight, so that nothing is dropped.
func BenchmarkRelay(b *testing.B) {
	const window = 8192
	socket := socketPath(b)
	onError := func(err error, info edge.ErrorInfo) { b.Errorf("%s: %v", info.Stage, err) }
	newHub := func() *edge.Hub {
		h, err := edge.New(edge.Options{Sync: New(Options{Socket: socket}), OnError: onError, QueueSize: 4 * window})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { h.Close() })
		return h
	}
	a, hb := newHub(), newHub()
	ep := &countEndpoint{reached: make(chan struct{}, 1)}
	m, err := hb.Join(edge.NewID(), "/bench", ep)
	if err != nil {
		b.Fatal(err)
	}
	if err := m.Subscribe("t"); err != nil {
		b.Fatal(err)
	}
	msg := edge.Message{Namespace: "/bench", Topic: "t", Data: edge.Text(strings.Repeat("x", 100))}
	ctx := context.Background()

	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if i%1024 == 0 && i >= window {
			ep.waitFor(b, int64(i-window/2))
		}
		if err := a.Publish(ctx, msg); err != nil {
			b.Fatal(err)
		}
	}
	ep.waitFor(b, int64(b.N))
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}
