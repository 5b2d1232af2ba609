package tests

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/coder/websocket"

	"github.com/edgesync/edgesync/apigw"
	"github.com/edgesync/edgesync/apigw/emulator"
	"github.com/edgesync/edgesync/drivers/memsync"
	"github.com/edgesync/edgesync/edge"
)

// BenchmarkGatewayPublish1000 measures the time for one publish to reach
// 1,000 API Gateway connections through the emulator: from Hub.Publish on a
// hub with an apigw.Gateway until every one of 1,000 real WebSocket clients
// has read the message. Each post is a real call of the AWS SDK to the
// emulator's management API, which writes the frame to the client.
func BenchmarkGatewayPublish1000(b *testing.B) {
	const peers = 1000
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	reg := memsync.NewRegistry(memsync.RegistryOptions{})
	gw, err := apigw.NewGateway(context.Background(), apigw.GatewayOptions{
		Registry: reg,
		Endpoint: "http://" + ln.Addr().String() + "/bench",
		Config:   &aws.Config{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("bench", "bench", "")},
	})
	if err != nil {
		b.Fatal(err)
	}
	hub, err := edge.New(edge.Options{Gateway: gw, PublishOnly: true})
	if err != nil {
		b.Fatal(err)
	}
	defer hub.Close()
	h := apigw.NewHandler(hub, edge.Hooks{Open: func(p edge.Peer) { _ = p.Subscribe(context.Background(), "t") }}, reg, gw)
	emu, err := emulator.New(emulator.Options{Stage: "bench", Handler: emulator.NewHandler(h.Handle)})
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: emu}
	go srv.Serve(ln)
	defer srv.Close()
	defer emu.Close()

	var received atomic.Int64
	round := make(chan struct{}, 1)
	var wg sync.WaitGroup
	ctx := context.Background()
	for range peers {
		c, _, err := websocket.Dial(ctx, "ws://"+ln.Addr().String()+"/bench", nil)
		if err != nil {
			b.Fatal(err)
		}
		defer c.CloseNow()
		wg.Go(func() {
			for {
				if _, _, err := c.Read(ctx); err != nil {
					return
				}
				if received.Add(1)%peers == 0 {
					round <- struct{}{}
				}
			}
		})
	}
	msg := edge.Message{Namespace: "/bench", Topic: "t", Data: edge.Text(fmt.Sprintf("%0100d", 0))}
	b.ResetTimer()
	for b.Loop() {
		if err := hub.Publish(ctx, msg); err != nil {
			b.Fatal(err)
		}
		<-round
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/peers, "µs/peer")
	emu.Close()
	wg.Wait()
}
