package apigw_test

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/aws/aws-lambda-go/lambda"

	"github.com/edgesync/edgesync/apigw"
	"github.com/edgesync/edgesync/drivers/memsync"
	"github.com/edgesync/edgesync/edge"
)

// BenchmarkHandleMessage measures the handler's own time for one $default
// invocation through the Lambda JSON path: decoding the event, rebuilding the
// peer from an in-memory Registry (no round trip), running a Message hook
// that publishes to the room, the Gateway's fan-out (the sender is the
// room's only subscriber, so nothing is posted), Flush, and encoding the
// response.
func BenchmarkHandleMessage(b *testing.B) {
	reg := memsync.NewRegistry(memsync.RegistryOptions{})
	gw := newGateway(b, reg, nil, func(o *apigw.GatewayOptions) {
		o.Endpoint = "https://abc123.execute-api.us-east-1.amazonaws.com/prod"
		o.HTTPClient = &http.Client{Transport: liveConnections{}}
	})
	hub, err := edge.New(edge.Options{Gateway: gw, PublishOnly: true})
	if err != nil {
		b.Fatal(err)
	}
	defer hub.Close()
	hooks := edge.Hooks{
		Open:    func(p edge.Peer) { _ = p.Subscribe(context.Background(), "room") },
		Message: func(p edge.Peer, d edge.Data) { _ = p.Publish(context.Background(), "room", d) },
	}
	h := lambda.NewHandler(apigw.NewHandler(hub, hooks, reg, gw).Handle)
	ctx := context.Background()
	connect, _ := json.Marshal(event("CONNECT", "bench-conn="))
	if _, err := h.Invoke(ctx, connect); err != nil {
		b.Fatal(err)
	}
	ev := event("MESSAGE", "bench-conn=")
	ev.Body = `{"user":"ann","text":"hello, room"}`
	payload, _ := json.Marshal(ev)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := h.Invoke(ctx, payload); err != nil {
			b.Fatal(err)
		}
	}
}
