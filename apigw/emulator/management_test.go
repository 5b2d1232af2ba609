package emulator_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/apigatewaymanagementapi"
	"github.com/aws/aws-sdk-go-v2/service/apigatewaymanagementapi/types"
	"github.com/coder/websocket"

	"github.com/edgesync/edgesync/apigw/emulator"
	"github.com/edgesync/edgesync/internal/testenv"
)

func post(ctx context.Context, api *apigatewaymanagementapi.Client, id string, data []byte) error {
	_, err := api.PostToConnection(ctx, &apigatewaymanagementapi.PostToConnectionInput{ConnectionId: aws.String(id), Data: data})
	return err
}

func TestManagementAPI(t *testing.T) {
	f := start(t, emulator.Options{}, nil)
	api := f.client(f.endpoint)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()

	before := time.Now().Add(-time.Second)
	c, conn := f.dial(t, "", &websocket.DialOptions{HTTPHeader: http.Header{"User-Agent": {"mgmt-test"}}})
	id := conn.id()

	// PostToConnection: a text frame for UTF-8, a binary frame otherwise.
	if err := post(ctx, api, id, []byte(`{"hello":"world"}`)); err != nil {
		t.Fatalf("PostToConnection: %v", err)
	}
	if typ, got := read(t, c); typ != websocket.MessageText || got != `{"hello":"world"}` {
		t.Errorf("client received %v %q", typ, got)
	}
	if err := post(ctx, api, id, []byte{0xff, 0x00}); err != nil {
		t.Fatalf("PostToConnection: %v", err)
	}
	if typ, got := read(t, c); typ != websocket.MessageBinary || got != "\xff\x00" {
		t.Errorf("client received %v %q", typ, got)
	}
	big := bytes.Repeat([]byte("z"), emulator.MaxMessageSize)
	if err := post(ctx, api, id, big); err != nil {
		t.Fatalf("PostToConnection of 128 KB: %v", err)
	}
	if _, got := read(t, c); len(got) != len(big) {
		t.Errorf("client received %d bytes", len(got))
	}

	// GetConnection.
	out, err := api.GetConnection(ctx, &apigatewaymanagementapi.GetConnectionInput{ConnectionId: aws.String(id)})
	if err != nil {
		t.Fatalf("GetConnection: %v", err)
	}
	if out.ConnectedAt == nil || out.ConnectedAt.Before(before) || out.ConnectedAt.After(time.Now()) ||
		out.LastActiveAt == nil || out.LastActiveAt.Before(*out.ConnectedAt) {
		t.Errorf("GetConnection times: connected %v, last active %v", out.ConnectedAt, out.LastActiveAt)
	}
	if out.Identity == nil || aws.ToString(out.Identity.SourceIp) != "127.0.0.1" || aws.ToString(out.Identity.UserAgent) != "mgmt-test" {
		t.Errorf("GetConnection identity: %+v", out.Identity)
	}

	// PayloadTooLargeException.
	var tooLarge *types.PayloadTooLargeException
	if err := post(ctx, api, id, append(big, 'z')); !errors.As(err, &tooLarge) {
		t.Errorf("PostToConnection over 128 KB: %v, want PayloadTooLargeException", err)
	}

	// DeleteConnection closes the client with 1000 and invokes $disconnect.
	if _, err := api.DeleteConnection(ctx, &apigatewaymanagementapi.DeleteConnectionInput{ConnectionId: aws.String(id)}); err != nil {
		t.Fatalf("DeleteConnection: %v", err)
	}
	if code := closed(t, c); code != websocket.StatusNormalClosure {
		t.Errorf("deleted client closed with %v, want 1000", code)
	}
	if d := awaitDisconnect(t, f, id); d.DisconnectStatusCode != 1000 || *d.DisconnectReason != "Connection Closed Normally" {
		t.Errorf("$disconnect %d %q", d.DisconnectStatusCode, *d.DisconnectReason)
	}

	// GoneException for a closed connection and for one never seen.
	var gone *types.GoneException
	for _, cid := range []string{id, "L0SM9cOFvHcCIhw="} {
		if err := post(ctx, api, cid, []byte("x")); !errors.As(err, &gone) {
			t.Errorf("PostToConnection(%s): %v, want GoneException", cid, err)
		}
		if _, err := api.GetConnection(ctx, &apigatewaymanagementapi.GetConnectionInput{ConnectionId: aws.String(cid)}); !errors.As(err, &gone) {
			t.Errorf("GetConnection(%s): %v, want GoneException", cid, err)
		}
		if _, err := api.DeleteConnection(ctx, &apigatewaymanagementapi.DeleteConnectionInput{ConnectionId: aws.String(cid)}); !errors.As(err, &gone) {
			t.Errorf("DeleteConnection(%s): %v, want GoneException", cid, err)
		}
	}

	// BadRequestException for an id that is no connection id.
	var apiErr interface {
		ErrorCode() string
		ErrorMessage() string
	}
	if err := post(ctx, api, "not-an-id", []byte("x")); !errors.As(err, &apiErr) || apiErr.ErrorCode() != "BadRequestException" ||
		apiErr.ErrorMessage() != "Invalid connectionId: not-an-id" {
		t.Errorf("PostToConnection(not-an-id): %v, want BadRequestException", err)
	}

	// ForbiddenException for another stage.
	var forbidden *types.ForbiddenException
	if err := post(ctx, f.client(f.srv.URL+"/prod"), id, []byte("x")); !errors.As(err, &forbidden) {
		t.Errorf("PostToConnection on another stage: %v, want ForbiddenException", err)
	}
}

func TestThrottle(t *testing.T) {
	f := start(t, emulator.Options{}, nil)
	api := f.client(f.endpoint)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	c, conn := f.dial(t, "", nil)

	f.em.Throttle(2)
	var limit *types.LimitExceededException
	for i := range 2 {
		if err := post(ctx, api, conn.id(), []byte("x")); !errors.As(err, &limit) {
			t.Fatalf("call %d: %v, want LimitExceededException", i, err)
		}
	}
	if err := post(ctx, api, conn.id(), []byte("through")); err != nil {
		t.Fatalf("third call: %v", err)
	}
	if _, got := read(t, c); got != "through" {
		t.Errorf("client received %q", got)
	}

	// The SDK's standard retryer retries a throttled call.
	f.em.Throttle(1)
	retrying := apigatewaymanagementapi.New(apigatewaymanagementapi.Options{
		BaseEndpoint: aws.String(f.endpoint),
		Region:       "us-east-1",
		Credentials:  f.client(f.endpoint).Options().Credentials,
		HTTPClient:   f.srv.Client(),
	})
	if err := post(ctx, retrying, conn.id(), []byte("retried")); err != nil {
		t.Fatalf("retried call: %v", err)
	}
	if _, got := read(t, c); got != "retried" {
		t.Errorf("client received %q", got)
	}
}

func TestPostBeforeConnected(t *testing.T) {
	connecting := make(chan string, 1)
	release := make(chan struct{})
	f := start(t, emulator.Options{}, func(ctx context.Context, ev events.APIGatewayWebsocketProxyRequest) (events.APIGatewayProxyResponse, error) {
		if ev.RequestContext.EventType == "CONNECT" {
			connecting <- ev.RequestContext.ConnectionID
			<-release
		}
		return events.APIGatewayProxyResponse{StatusCode: 200}, nil
	})
	api := f.client(f.endpoint)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()

	dialed := make(chan *websocket.Conn, 1)
	go func() {
		c, _, err := websocket.Dial(ctx, f.url, nil)
		if err != nil {
			t.Errorf("dial: %v", err)
		}
		dialed <- c
	}()
	id := testenv.Recv(t, connecting, wait, "the $connect invocation")
	var gone *types.GoneException
	if err := post(ctx, api, id, []byte("early")); !errors.As(err, &gone) {
		t.Errorf("PostToConnection during $connect: %v, want GoneException", err)
	}
	if _, err := api.GetConnection(ctx, &apigatewaymanagementapi.GetConnectionInput{ConnectionId: aws.String(id)}); !errors.As(err, &gone) {
		t.Errorf("GetConnection during $connect: %v, want GoneException", err)
	}
	close(release)
	c := testenv.Recv(t, dialed, wait, "the handshake")
	if c == nil {
		t.FailNow()
	}
	defer c.CloseNow()
	// Postable as soon as the client has its handshake.
	if err := post(ctx, api, id, []byte("now")); err != nil {
		t.Fatalf("PostToConnection after $connect: %v", err)
	}
	if _, got := read(t, c); got != "now" {
		t.Errorf("client received %q", got)
	}
}

func TestPostDuringDisconnect(t *testing.T) {
	results := make(chan error, 1)
	var api *apigatewaymanagementapi.Client
	f := start(t, emulator.Options{}, func(ctx context.Context, ev events.APIGatewayWebsocketProxyRequest) (events.APIGatewayProxyResponse, error) {
		if ev.RequestContext.EventType == "DISCONNECT" {
			results <- post(ctx, api, ev.RequestContext.ConnectionID, []byte("late"))
		}
		return events.APIGatewayProxyResponse{StatusCode: 200}, nil
	})
	api = f.client(f.endpoint)
	c, _ := f.dial(t, "", nil)
	_ = c.Close(websocket.StatusNormalClosure, "")
	var gone *types.GoneException
	if err := testenv.Recv(t, results, wait, "the post from $disconnect"); !errors.As(err, &gone) {
		t.Errorf("PostToConnection from $disconnect: %v, want GoneException", err)
	}
}

// TestManagementWire checks the answers byte for byte, as other SDKs parse
// them too.
func TestManagementWire(t *testing.T) {
	f := start(t, emulator.Options{}, nil)
	_, conn := f.dial(t, "", nil)
	escaped := strings.ReplaceAll(conn.id(), "=", "%3D")
	escaped = strings.ReplaceAll(strings.ReplaceAll(escaped, "+", "%2B"), "/", "%2F")
	for _, tc := range []struct {
		method, path, body string
		status             int
		errType, answer    string
	}{
		{"POST", "/local/@connections/" + escaped, "hi", 200, "", ""},
		{"POST", "/local/%40connections/" + escaped, "hi", 200, "", ""},
		{"GET", "/local/@connections/AAAAAAAAAAAAAAA%3D", "", 410, "GoneException", ""},
		{"POST", "/local/@connections/abc", "hi", 400, "BadRequestException", `{"message":"Invalid connectionId: abc"}`},
		{"PUT", "/local/@connections/" + escaped, "", 403, "ForbiddenException", `{"message":"Forbidden"}`},
		{"POST", "/local/@connections", "", 403, "ForbiddenException", `{"message":"Forbidden"}`},
		{"POST", "/local/@connections/" + escaped + "/x", "", 403, "ForbiddenException", `{"message":"Forbidden"}`},
		{"POST", "/other/@connections/" + escaped, "", 403, "ForbiddenException", `{"message":"Forbidden"}`},
		{"GET", "/local/anything", "", 403, "ForbiddenException", `{"message":"Forbidden"}`},
		{"GET", "/nowhere", "", 404, "", "404 page not found\n"},
		{"GET", "/", "", 404, "", "404 page not found\n"},
		{"POST", "/local/@connections/" + escaped, strings.Repeat("a", emulator.MaxMessageSize+1), 413, "PayloadTooLargeException", `{"message":"Message too long"}`},
	} {
		req, _ := http.NewRequest(tc.method, f.srv.URL+tc.path, strings.NewReader(tc.body))
		req.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240101/us-east-1/execute-api/aws4_request, SignedHeaders=host, Signature=0")
		resp, err := f.srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status || resp.Header.Get("X-Amzn-ErrorType") != tc.errType || string(body) != tc.answer {
			t.Errorf("%s %s: %d %q %q, want %d %q %q", tc.method, tc.path, resp.StatusCode,
				resp.Header.Get("X-Amzn-ErrorType"), body, tc.status, tc.errType, tc.answer)
		}
	}

	f.em.Throttle(1)
	resp, err := f.srv.Client().Get(f.endpoint + "/@connections/" + escaped)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 429 || resp.Header.Get("X-Amzn-ErrorType") != "LimitExceededException" || string(body) != `{"message":"Too Many Requests"}` {
		t.Errorf("throttled: %d %q %q", resp.StatusCode, resp.Header.Get("X-Amzn-ErrorType"), body)
	}
}

func TestEmulatorConnections(t *testing.T) {
	f := start(t, emulator.Options{}, nil)
	var ids []string
	getJSON(t, f.srv.Client(), f.srv.URL+"/_emulator/connections", &ids)
	if ids == nil || len(ids) != 0 {
		t.Errorf("no connections: %v", ids)
	}
	_, a := f.dial(t, "", nil)
	_, b := f.dial(t, "", nil)
	getJSON(t, f.srv.Client(), f.srv.URL+"/_emulator/connections", &ids)
	if len(ids) != 2 || ids[0] != a.id() || ids[1] != b.id() {
		t.Errorf("connections %v, want [%s %s]", ids, a.id(), b.id())
	}
	resp, err := f.srv.Client().Post(f.srv.URL+"/_emulator/connections", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: %s", resp.Status)
	}
}
