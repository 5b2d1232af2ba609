package tests

import (
	"context"
	"fmt"
	"net"
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
// Besides the time per delivery it reports deliveries/s and the server's
// write calls to its connections per delivery (writes/delivery), counted
// by a wrapper around each accepted connection: one per system call.
func BenchmarkFanOutToWebSocketPeers(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		b.Run(fmt.Sprintf("peers=%d", n), func(b *testing.B) {
			hub, err := edge.New(edge.Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer hub.Close()
			ws := longlived.New(hub, edge.Hooks{Open: func(p edge.Peer) { p.Subscribe(context.Background(), "t") }})
			srv := httptest.NewUnstartedServer(ws)
			writes := &countingListener{Listener: srv.Listener}
			srv.Listener = writes
			srv.Start()
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
			before := writes.writes.Load()
			for i := range b.N {
				if err := hub.Publish(context.Background(), msg); err != nil {
					b.Fatal(err)
				}
				if (i+1)%window == 0 || i+1 == b.N {
					awaitCount(b, &received, int64(i+1)*int64(n))
				}
			}
			b.StopTimer()
			deliveries := float64(b.N) * float64(n)
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/deliveries, "ns/delivery")
			b.ReportMetric(deliveries/b.Elapsed().Seconds(), "deliveries/s")
			b.ReportMetric(float64(writes.writes.Load()-before)/deliveries, "writes/delivery")
		})
	}
}

// countingListener counts the Write calls on the connections it accepts.
type countingListener struct {
	net.Listener
	writes atomic.Int64
}

// Accept implements net.Listener.
func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: c, writes: &l.writes}, nil
}

// countingConn counts its Write calls.
type countingConn struct {
	net.Conn
	writes *atomic.Int64
}

// Write implements net.Conn.
func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
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
