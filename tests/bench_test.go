package tests

import (
	"context"
	"fmt"
	"net"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/edgesync/edgesync/drivers/redissync"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/internal/testenv"
	"github.com/edgesync/edgesync/longlived"
	"github.com/redis/go-redis/v9"
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

// BenchmarkFanOutOverRedis is the fan-out of two long-lived instances over
// Redis: hub A publishes 100-byte text messages, relayed through Redis to
// hub B, which holds the n WebSocket subscribers (coder/websocket clients
// in this process, on loopback). Every message carries its publish time, so
// each client measures its latency.
//
// In "window=100" the publisher stays at most 100 messages ahead of the
// slowest delivery and reports deliveries/s; every delivery must arrive
// (lost must be 0). In "rate=200k" it publishes at 200,000 deliveries a
// second, 2,000 messages a second to 100 peers, and reports the latency
// percentiles:
//
//	go test -run '^$' -bench FanOutOverRedis -benchtime 20000x ./tests
func BenchmarkFanOutOverRedis(b *testing.B) {
	url := testenv.RedisURL(b)
	b.Run("peers=100/window=100", func(b *testing.B) { redisFanOut(b, url, 100, 100, 0) })
	b.Run("peers=1000/window=100", func(b *testing.B) { redisFanOut(b, url, 1000, 100, 0) })
	b.Run("peers=100/rate=200k", func(b *testing.B) { redisFanOut(b, url, 100, 0, 2000) })
	// The same messages to one peer: the relay's own latency, without
	// the fan-out.
	b.Run("peers=1/rate=2k", func(b *testing.B) { redisFanOut(b, url, 1, 0, 2000) })
}

// redisFanOut runs one case of BenchmarkFanOutOverRedis: n subscribers, at
// most window messages in flight, or perSecond messages a second.
func redisFanOut(b *testing.B, url string, n, window, perSecond int) {
	channel := testenv.Channel(b)
	newHub := func() *edge.Hub {
		opts, err := redis.ParseURL(url)
		if err != nil {
			b.Fatal(err)
		}
		opts.ContextTimeoutEnabled = true
		client := redis.NewClient(opts)
		b.Cleanup(func() { client.Close() })
		hub, err := edge.New(edge.Options{Sync: redissync.New(redissync.Options{Client: client, Channel: channel})})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { hub.Close() })
		return hub
	}
	hubA, hubB := newHub(), newHub()
	ws := longlived.New(hubB, edge.Hooks{Open: func(p edge.Peer) { p.Subscribe(context.Background(), "t") }})
	srv := httptest.NewServer(ws)
	defer srv.Close()
	defer ws.Close(context.Background())
	testenv.RelayUntilDelivered(b, hubA, testenv.Join(b, hubB, "/bench", "probe"), "/bench", "probe")

	var received atomic.Int64
	latencies := make([][]time.Duration, n)
	var readers sync.WaitGroup
	defer readers.Wait()
	url2 := "ws" + strings.TrimPrefix(srv.URL, "http") + "/bench"
	for i := range n {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		conn, _, err := websocket.Dial(ctx, url2, nil)
		if err != nil {
			b.Fatal(err)
		}
		defer conn.CloseNow()
		readers.Add(1)
		go func() {
			defer readers.Done()
			for {
				_, msg, err := conn.Read(context.Background())
				if err != nil {
					return
				}
				if sent, err := strconv.ParseInt(string(msg[:19]), 10, 64); err == nil {
					latencies[i] = append(latencies[i], time.Duration(time.Now().UnixNano()-sent))
				}
				received.Add(1)
			}
		}()
		if err := conn.Ping(ctx); err != nil { // subscribed once answered
			b.Fatal(err)
		}
		cancel()
	}
	padding := strings.Repeat("x", 100-19)
	publish := func() {
		text := fmt.Sprintf("%019d", time.Now().UnixNano()) + padding
		if err := hubA.Publish(context.Background(), edge.Message{Namespace: "/bench", Topic: "t", Data: edge.Text(text)}); err != nil {
			b.Fatal(err)
		}
	}
	droppedBefore := hubA.Stats().Dropped
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		if perSecond > 0 {
			// Paced: message i goes out at its time.
			if d := time.Until(start.Add(time.Duration(i) * time.Second / time.Duration(perSecond))); d > 0 {
				time.Sleep(d)
			}
		} else if i >= window {
			awaitCount(b, &received, int64(i-window+1)*int64(n))
		}
		publish()
	}
	awaitCount(b, &received, int64(b.N)*int64(n))
	b.StopTimer()
	deliveries := float64(b.N) * float64(n)
	b.ReportMetric(deliveries/b.Elapsed().Seconds(), "deliveries/s")
	b.ReportMetric(float64(hubA.Stats().Dropped-droppedBefore), "dropped")
	b.ReportMetric(0, "ns/op")
	if perSecond > 0 {
		var all []time.Duration
		for _, l := range latencies {
			all = append(all, l...)
		}
		slices.Sort(all)
		if len(all) > 0 {
			b.ReportMetric(float64(all[len(all)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(all[len(all)*99/100].Microseconds()), "p99-µs")
			b.ReportMetric(float64(all[len(all)-1].Microseconds()), "max-µs")
		}
	}
}
