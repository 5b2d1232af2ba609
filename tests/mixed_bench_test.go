package tests

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/coder/websocket"
	"github.com/redis/go-redis/v9"

	"github.com/edgesync/edgesync/apigw"
	"github.com/edgesync/edgesync/apigw/emulator"
	"github.com/edgesync/edgesync/drivers/redissync"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/internal/testenv"
	"github.com/edgesync/edgesync/longlived"
)

// BenchmarkMixedLatency measures publish-to-delivery latency on each path of
// a mixed cluster over Redis: two long-lived instances (VM), and a Lambda
// handler under the API Gateway emulator, every instance with the Gateway.
// A client sends a message stamped with the time; the receiving client, on
// the path's other end, reads the time off it. Messages go one at a time,
// so the figures are latency, not throughput.
//
//	VM→VM            a long-lived client to one on the other long-lived instance, through Redis
//	VM→gateway       a long-lived client to an API Gateway client: the VM's hub posts to it
//	Lambda→VM        an API Gateway client to a long-lived client: the Lambda relays through Redis
//	Lambda→gateway   an API Gateway client to another: the Lambda posts to it before returning
func BenchmarkMixedLatency(b *testing.B) {
	c := newLatencyCluster(b)
	for _, path := range []struct {
		name     string
		from, to *benchClient
	}{
		{"VM-VM", c.vm1, c.vm2},
		{"VM-gateway", c.vm1, c.gw2},
		{"Lambda-VM", c.gw1, c.vm2},
		{"Lambda-gateway", c.gw1, c.gw2},
	} {
		b.Run(path.name, func(b *testing.B) {
			lat := make([]time.Duration, 0, b.N)
			ctx := context.Background()
			for i := 0; b.Loop(); i++ {
				tag := fmt.Sprintf("%s %d %d", path.name, i, time.Now().UnixNano())
				if err := path.from.conn.Write(ctx, websocket.MessageText, []byte(tag)); err != nil {
					b.Fatal(err)
				}
				for {
					got := testenv.Recv(b, path.to.got, wait, "the message")
					if got == tag {
						sent, _ := strconv.ParseInt(tag[strings.LastIndexByte(tag, ' ')+1:], 10, 64)
						lat = append(lat, time.Since(time.Unix(0, sent)))
						break
					}
				}
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
}

// latencyCluster is two long-lived instances and a Lambda under the emulator,
// on one Redis channel, with a client each on vm1 and vm2 and two on the
// emulator. Every client drains what it is not waiting for in another path:
// only the path's receiver reads while the path runs, so the others' queues
// fill at most with one benchmark's messages.
type latencyCluster struct {
	vm1, vm2, gw1, gw2 *benchClient
}

// benchClient is a WebSocket client whose messages a goroutine reads into got.
type benchClient struct {
	conn *websocket.Conn
	got  chan string
}

func newLatencyCluster(b *testing.B) *latencyCluster {
	url := testenv.RedisURL(b)
	channel := testenv.Channel(b)
	opts, err := redis.ParseURL(url)
	if err != nil {
		b.Fatal(err)
	}
	opts.ContextTimeoutEnabled = true
	rdb := redis.NewClient(opts)
	b.Cleanup(func() { rdb.Close() })
	reg, err := redissync.NewRegistry(redissync.RegistryOptions{Client: rdb, Channel: channel})
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	endpoint := "http://" + ln.Addr().String() + "/bench"
	newGateway := func() *apigw.Gateway {
		gw, err := apigw.NewGateway(context.Background(), apigw.GatewayOptions{
			Registry: reg, Endpoint: endpoint,
			Config: &aws.Config{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("bench", "bench", "")},
		})
		if err != nil {
			b.Fatal(err)
		}
		return gw
	}
	newHub := func(publishOnly bool, gw *apigw.Gateway) *edge.Hub {
		hub, err := edge.New(edge.Options{
			Sync:        redissync.New(redissync.Options{Client: rdb, Channel: channel}),
			PublishOnly: publishOnly,
			Gateway:     gw,
		})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { hub.Close() })
		return hub
	}
	hooks := edge.Hooks{
		Upgrade: func(*http.Request) (edge.Accept, error) { return edge.Accept{Namespace: "/bench"}, nil },
		Open:    func(p edge.Peer) { _ = p.Subscribe(context.Background(), "t") },
		Message: func(p edge.Peer, d edge.Data) { _ = p.Publish(context.Background(), "t", d) },
	}

	// The Lambda under the emulator.
	lambdaGW := newGateway()
	h := apigw.NewHandler(newHub(true, lambdaGW), hooks, reg, lambdaGW)
	emu, err := emulator.New(emulator.Options{Stage: "bench", Handler: emulator.NewHandler(h.Handle)})
	if err != nil {
		b.Fatal(err)
	}
	emuSrv := &http.Server{Handler: emu}
	go emuSrv.Serve(ln)
	b.Cleanup(func() { emu.Close(); emuSrv.Close() })

	// Two long-lived instances.
	vm := func() string {
		ws := longlived.New(newHub(false, newGateway()), hooks)
		srv := httptest.NewServer(ws)
		b.Cleanup(func() { ws.Close(context.Background()); srv.Close() })
		return "ws" + strings.TrimPrefix(srv.URL, "http")
	}
	dial := func(url string) *benchClient {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		c, _, err := websocket.Dial(ctx, url, nil)
		if err != nil {
			b.Fatal(err)
		}
		bc := &benchClient{conn: c, got: make(chan string, 1<<16)}
		go func() {
			for {
				_, data, err := c.Read(context.Background())
				if err != nil {
					return
				}
				bc.got <- string(data)
			}
		}()
		b.Cleanup(func() { c.CloseNow() })
		// A peer has subscribed once it answers a ping (a long-lived one
		// reads after Open; an API Gateway one after $connect).
		if err := c.Ping(ctx); err != nil {
			b.Fatal(err)
		}
		return bc
	}
	gwURL := "ws://" + ln.Addr().String() + "/bench"
	return &latencyCluster{vm1: dial(vm()), vm2: dial(vm()), gw1: dial(gwURL), gw2: dial(gwURL)}
}
