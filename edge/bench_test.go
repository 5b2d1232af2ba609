package edge_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/edgesync/edgesync/edge"
)

// counter is the cheapest Endpoint: what is left is the Hub's own cost.
type counter struct{ n atomic.Int64 }

func (c *counter) Deliver(edge.Data)       { c.n.Add(1) }
func (c *counter) Close(int, string) error { return nil }

// BenchmarkHubPublish measures one Hub.Publish to n local subscribers.
func BenchmarkHubPublish(b *testing.B) {
	for _, n := range []int{10, 1000, 10000} {
		b.Run(fmt.Sprintf("subscribers=%d", n), func(b *testing.B) {
			hub, err := edge.New(edge.Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer hub.Close()
			c := &counter{}
			for range n {
				m, err := hub.Join(edge.NewID(), "/bench", c)
				if err != nil {
					b.Fatal(err)
				}
				m.Subscribe("t")
			}
			msg := edge.Message{Namespace: "/bench", Topic: "t", Data: edge.Text("a 100-byte message ........................................................................")}
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				hub.Publish(ctx, msg)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/subscriber")
			if got := c.n.Load(); got != int64(b.N)*int64(n) {
				b.Fatalf("delivered %d, want %d", got, b.N*n)
			}
		})
	}
}
