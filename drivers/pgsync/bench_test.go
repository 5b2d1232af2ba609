package pgsync_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgesync/edgesync/drivers/pgsync"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/internal/testenv"
)

// counter is an endpoint that counts what it receives and signals when it
// has received want messages.
type counter struct {
	n    atomic.Int64
	want int64
	done chan struct{}
}

func (c *counter) Deliver(edge.Data) {
	if c.n.Add(1) == c.want {
		close(c.done)
	}
}

func (c *counter) Close(int, string) error { return nil }

// flushEvery is how many messages BenchmarkRelay publishes between two waits
// for the relay queue to drain.
const flushEvery = 8192

// BenchmarkRelay measures how many 100-byte text messages per second hub A
// relays to hub B through Postgres: A publishes b.N messages, and the clock
// stops when B's member has received them all.
func BenchmarkRelay(b *testing.B) {
	connString := testenv.PostgresURL(b)
	pool := newPool(b, connString)
	channel := testenv.Channel(b)
	newHub := func() *edge.Hub {
		hub, err := edge.New(edge.Options{
			Sync:      pgsync.New(pgsync.Options{Pool: pool, Channel: channel}),
			QueueSize: 2 * flushEvery, // nothing dropped
			OnError:   func(err error, info edge.ErrorInfo) { b.Errorf("%s: %v", info.Stage, err) },
		})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { hub.Close() })
		return hub
	}
	a, recv := newHub(), newHub()
	c := &counter{want: int64(b.N), done: make(chan struct{})}
	m, err := recv.Join(edge.NewID(), "/bench", c)
	if err != nil {
		b.Fatal(err)
	}
	if err := m.Subscribe("t"); err != nil {
		b.Fatal(err)
	}
	// Distinct bodies, as real traffic has: Postgres merges identical
	// notifications of one transaction, which the driver must prevent.
	msgs := make([]edge.Message, 4096)
	for i := range msgs {
		body := fmt.Sprintf("%04d%s", i, strings.Repeat("x", 96))
		msgs[i] = edge.Message{Namespace: "/bench", Topic: "t", Data: edge.Text(body)}
	}
	ctx := context.Background()

	b.ResetTimer()
	for i := range b.N {
		if i%flushEvery == 0 {
			// The queue never holds more than flushEvery messages: none is dropped.
			if err := a.Flush(ctx); err != nil {
				b.Fatal(err)
			}
		}
		if err := a.Publish(ctx, msgs[i%len(msgs)]); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-c.done:
	case <-time.After(time.Minute):
		b.Fatalf("received %d of %d messages; sender %+v, receiver %+v", c.n.Load(), b.N, a.Stats(), recv.Stats())
	}
	b.StopTimer()
	// B may receive the last batch before A's round trip ends.
	if err := a.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}
