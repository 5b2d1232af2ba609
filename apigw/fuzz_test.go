package apigw_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-lambda-go/lambda"

	"github.com/edgesync/edgesync/apigw"
	"github.com/edgesync/edgesync/drivers/memsync"
	"github.com/edgesync/edgesync/edge"
)

// FuzzHandle feeds arbitrary invocation payloads through the Lambda JSON
// path to a Handler whose hooks subscribe, publish and send what the events
// say: whatever the payload, the handler answers without panicking, with a
// status it documents.
func FuzzHandle(f *testing.F) {
	for _, typ := range []string{"CONNECT", "MESSAGE", "DISCONNECT"} {
		ev := event(typ, "fuzz-conn=")
		ev.Body = `{"action":"sendmessage","topic":"room","data":"hi"}`
		b, _ := json.Marshal(ev)
		f.Add(b)
	}
	b64 := event("MESSAGE", "fuzz-conn=")
	b64.Body, b64.IsBase64Encoded = "aGVsbG8=", true
	b, _ := json.Marshal(b64)
	f.Add(b)
	f.Add([]byte(`{"requestContext":{"eventType":"MESSAGE","connectionId":"x","stage":"s"},"body":"\u0000"}`))
	f.Add([]byte(`{"requestContext":{"eventType":"CONNECT","connectionId":"x"},"queryStringParameters":{"ns":"{}:'\"--"}}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`null`))

	// The management API answers in memory, as AWS would a live
	// connection, so that inputs are not slowed down by sockets.
	reg := memsync.NewRegistry(memsync.RegistryOptions{})
	gw := newGateway(f, reg, nil, func(o *apigw.GatewayOptions) {
		o.Endpoint = "https://abc123.execute-api.us-east-1.amazonaws.com/prod"
		o.HTTPClient = &http.Client{Transport: liveConnections{}}
	})
	hub, err := edge.New(edge.Options{Gateway: gw, PublishOnly: true, OnError: func(error, edge.ErrorInfo) {}})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { hub.Close() })
	hooks := edge.Hooks{
		Upgrade: func(r *http.Request) (edge.Accept, error) {
			if r.URL.Query().Get("refuse") != "" {
				return edge.Accept{}, &edge.Reject{Status: 401}
			}
			return edge.Accept{Namespace: r.URL.Query().Get("ns"), Attrs: map[string]string{"q": r.URL.RawQuery}}, nil
		},
		Open: func(p edge.Peer) { _ = p.Subscribe(context.Background(), "room") },
		Message: func(p edge.Peer, d edge.Data) {
			var m struct{ Topic, Data string }
			_ = json.Unmarshal(d.Bytes, &m)
			_ = p.Subscribe(context.Background(), m.Topic)
			_ = p.Publish(context.Background(), m.Topic, edge.Text(m.Data))
			_ = p.Send(context.Background(), d)
			if m.Data == "close" {
				_ = p.Close(1000, "bye")
			}
		},
		Error: func(edge.Peer, error) {},
	}
	h := lambda.NewHandler(apigw.NewHandler(hub, hooks, reg, gw).Handle)

	f.Fuzz(func(t *testing.T, payload []byte) {
		out, err := h.Invoke(context.Background(), payload)
		// Every input is a connection of its own: forget it, so that the
		// topics' subscribers do not pile up across inputs.
		var ev events.APIGatewayWebsocketProxyRequest
		if json.Unmarshal(payload, &ev) == nil {
			_ = reg.Remove(context.Background(), ev.RequestContext.ConnectionID)
		}
		if err != nil {
			return // not an event: the Lambda runtime's own decoding error
		}
		var resp events.APIGatewayProxyResponse
		if err := json.Unmarshal(out, &resp); err != nil {
			t.Fatalf("response %q is not a proxy response: %v", out, err)
		}
		switch resp.StatusCode {
		case 200, 400, 401, 403, 410, 500:
		default:
			t.Fatalf("status %d (%q) for %q", resp.StatusCode, resp.Body, payload)
		}
	})
}

// liveConnections answers the management API's calls as API Gateway does
// for a live connection: 200 to a post, 204 to a delete, and a connection's
// details to a get.
type liveConnections struct{}

func (liveConnections) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		_, _ = io.Copy(io.Discard, r.Body)
		r.Body.Close()
	}
	status, body := http.StatusOK, ""
	switch r.Method {
	case http.MethodDelete:
		status = http.StatusNoContent
	case http.MethodGet:
		body = `{"connectedAt":"2025-03-01T10:00:00Z","lastActiveAt":"2025-03-01T10:00:00Z","identity":{"sourceIp":"192.0.2.1","userAgent":"fuzz"}}`
	}
	return &http.Response{
		StatusCode: status, Header: http.Header{"Content-Type": {"application/json"}},
		Body: io.NopCloser(strings.NewReader(body)), ContentLength: int64(len(body)), Request: r,
	}, nil
}
