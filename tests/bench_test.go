package tests

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/longlived"
)

// BenchmarkFanOutToWebSocketPeers measures Hub.Publish to n real WebSocket
// peers, from the publish to the last client's read: the hub, each peer's
// write queue and writer, the socket, and the clients (in this process).
func BenchmarkFanOutToWebSocketPeers(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		b.Run(fmt.Sprintf("peers=%d", n), func(b *testing.B) {
			hub, err := edge.New(edge.Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer hub.Close()
			ws := longlived.New(hub, edge.Hooks{Open: func(p edge.Peer) { p.Subscribe(context.Background(), "t") }})
			srv := httptest.NewServer(ws)
			defer srv.Close()
			defer ws.Close(context.Background())

			var received atomic.Int64
			url := "ws" + strings.TrimPrefix(srv.URL, "http") + "/bench"
			for range n {
				ctx, cancel := context.WithTimeout(context.Background(), wait)
				conn, _, err := websocket.Dial(ctx, url, nil)
				if err != nil {
					b.Fatal(err)
				}
				defer conn.CloseNow()
				go func() {
					for {
						if _, _, err := conn.Read(context.Background()); err != nil {
							return
						}
						received.Add(1)
					}
				}()
				if err := conn.Ping(ctx); err != nil { // subscribed once answered
					b.Fatal(err)
				}
				cancel()
			}
			msg := edge.Message{Namespace: "/bench", Topic: "t", Data: edge.Text(strings.Repeat("x", 100))}
			const window = 256 // messages in flight, well within each peer's write queue
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				if err := hub.Publish(context.Background(), msg); err != nil {
					b.Fatal(err)
				}
				if (i+1)%window == 0 || i+1 == b.N {
					awaitCount(b, &received, int64(i+1)*int64(n))
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/delivery")
		})
	}
}

// awaitCount waits until c reaches want, yielding the processor meanwhile.
func awaitCount(b *testing.B, c *atomic.Int64, want int64) {
	deadline := time.Now().Add(wait)
	for c.Load() < want {
		if time.Now().After(deadline) {
			b.Fatalf("delivered %d of %d", c.Load(), want)
		}
		time.Sleep(50 * time.Microsecond)
	}
}
