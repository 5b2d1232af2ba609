package tests

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"

	"github.com/edgesync/edgesync/apigw/emulator"
	"github.com/edgesync/edgesync/internal/testenv"
)

// BenchmarkChatLambdaColdStart measures the chat Lambda's cold start: each
// iteration starts one process of its bootstrap, built as template.yaml
// builds it, under the emulator's Lambda Runtime API, and invokes a
// $connect event, which the function answers 200 once it has recorded the
// connection in Redis. ms/cold-start is the time from the process's start
// to that response, the first invocation's latency on a new Lambda
// instance; ms/first-next is the part of it until the process asked for
// its first invocation (Runtime.ColdStarts): the process's start and the
// function's init, before its handler runs. Closing the process is not
// timed.
//
//	EDGESYNC_REQUIRE_SERVICES=1 go test -run '^$' -bench ChatLambdaColdStart ./tests
func BenchmarkChatLambdaColdStart(b *testing.B) {
	bin, err := buildLambda()
	if err != nil {
		b.Fatal(err)
	}
	opts := emulator.RuntimeOptions{
		Command: []string{bin},
		Procs:   1,
		Env: []string{
			"EDGESYNC_REDIS_URL=" + testenv.RedisURL(b),
			"EDGESYNC_CHANNEL=" + testenv.Channel(b),
			"EDGESYNC_APIGW_ENDPOINT=http://127.0.0.1:1/local",
		},
	}
	ctx := context.Background()
	var coldStart, firstNext time.Duration
	n := 0
	for b.Loop() {
		var stderr lockedBuffer
		opts.Stderr = &stderr
		id := newConnectionID()
		connect := benchEvent(b, "$connect", "CONNECT", id)

		start := time.Now()
		rt, err := emulator.NewRuntime(ctx, opts)
		if err != nil {
			b.Fatalf("start: %v\n%s", err, stderr.String())
		}
		out, err := rt.Invoke(ctx, connect)
		cold := time.Since(start)

		b.StopTimer()
		if err == nil {
			err = wantStatus(out, http.StatusOK)
		}
		if err == nil {
			// Forget the connection again.
			disconnect := benchEvent(b, "$disconnect", "DISCONNECT", id)
			var dout []byte
			if dout, err = rt.Invoke(ctx, disconnect); err == nil {
				err = wantStatus(dout, http.StatusOK)
			}
		}
		cs := rt.ColdStarts()
		rt.Close()
		if err != nil {
			b.Fatalf("invoke: %v\n%s", err, stderr.String())
		}
		if len(cs) != 1 {
			b.Fatalf("ColdStarts() = %v, want one", cs)
		}
		coldStart += cold
		firstNext += cs[0]
		n++
		b.StartTimer()
	}
	b.ReportMetric(float64(coldStart.Microseconds())/1e3/float64(n), "ms/cold-start")
	b.ReportMetric(float64(firstNext.Microseconds())/1e3/float64(n), "ms/first-next")
}

// benchEvent returns an event of the connection id shaped as the emulator
// sends it, for a client of the emulator on 127.0.0.1:1.
func benchEvent(b *testing.B, routeKey, eventType, id string) []byte {
	now := time.Now()
	rid := newConnectionID()
	ev := events.APIGatewayWebsocketProxyRequest{
		RequestContext: events.APIGatewayWebsocketProxyRequestContext{
			RouteKey:          routeKey,
			EventType:         eventType,
			ExtendedRequestID: rid,
			RequestID:         rid,
			RequestTime:       now.UTC().Format("02/Jan/2006:15:04:05 -0700"),
			RequestTimeEpoch:  now.UnixMilli(),
			MessageDirection:  "IN",
			Stage:             "local",
			ConnectedAt:       now.UnixMilli(),
			Identity:          events.APIGatewayRequestIdentity{SourceIP: "127.0.0.1", UserAgent: "edgesync-bench"},
			DomainName:        "127.0.0.1:1",
			ConnectionID:      id,
			APIID:             emulator.DefaultAPIID,
		},
	}
	headers := map[string]string{"Host": "127.0.0.1:1"}
	if eventType == "CONNECT" {
		headers = map[string]string{
			"Host":                  "127.0.0.1:1",
			"Connection":            "Upgrade",
			"Upgrade":               "websocket",
			"Sec-Websocket-Key":     base64.StdEncoding.EncodeToString([]byte(rid)),
			"Sec-Websocket-Version": "13",
			"User-Agent":            "edgesync-bench",
			"X-Amzn-Trace-Id":       fmt.Sprintf("Root=1-%08x-%024x", now.Unix(), now.UnixNano()),
			"X-Forwarded-For":       "127.0.0.1",
			"X-Forwarded-Port":      "1",
			"X-Forwarded-Proto":     "http",
		}
	} else {
		reason := ""
		ev.RequestContext.DisconnectStatusCode = 1000
		ev.RequestContext.DisconnectReason = &reason
	}
	ev.Headers = headers
	ev.MultiValueHeaders = make(map[string][]string, len(headers))
	for k, v := range headers {
		ev.MultiValueHeaders[k] = []string{v}
	}
	payload, err := json.Marshal(ev)
	if err != nil {
		b.Fatal(err)
	}
	return payload
}

// wantStatus checks a function's proxy response's statusCode.
func wantStatus(out []byte, status int) error {
	var resp events.APIGatewayProxyResponse
	if err := json.Unmarshal(out, &resp); err != nil {
		return fmt.Errorf("response %q: %w", out, err)
	}
	if resp.StatusCode != status {
		return fmt.Errorf("answered %d %q, want %d", resp.StatusCode, resp.Body, status)
	}
	return nil
}

// lockedBuffer is a bytes.Buffer safe for a process's output.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}
