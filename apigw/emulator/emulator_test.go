package emulator_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/apigatewaymanagementapi"
	"github.com/coder/websocket"

	"github.com/edgesync/edgesync/apigw/emulator"
	"github.com/edgesync/edgesync/internal/testenv"
)

// lambdaTestdata returns the decoded JSON of one of aws-lambda-go's recorded
// API Gateway events.
func lambdaTestdata(t *testing.T, name string) map[string]any {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/aws/aws-lambda-go").Output()
	if err != nil {
		t.Fatalf("locating aws-lambda-go: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(strings.TrimSpace(string(out)), "events", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func decode(t *testing.T, raw []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func keys(m any) []string {
	mm, _ := m.(map[string]any)
	return slices.Sorted(maps.Keys(mm))
}

// isID reports whether s has the form of API Gateway's ids.
func isID(s string) bool {
	b, err := base64.StdEncoding.DecodeString(s)
	return err == nil && len(s) == 16 && len(b) == 11
}

func TestEventShapes(t *testing.T) {
	f := start(t, emulator.Options{Stage: "prod", APIID: "dl7ptocha9"}, nil)
	before := time.Now().UnixMilli()
	c, conn := f.dial(t, "?name=me&x=1&x=2", &websocket.DialOptions{
		HTTPHeader: http.Header{"User-Agent": {"shape-test/1.0"}, "X-Custom": {"a"}},
	})
	id := conn.id()
	if !isID(id) {
		t.Errorf("connectionId %q is not in API Gateway's form", id)
	}
	host := strings.TrimPrefix(f.srv.URL, "http://")

	// CONNECT: the fields of the recorded connect event that API Gateway
	// sends on a WebSocket connect, and nothing else.
	ev := decode(t, conn.raw)
	if got, want := keys(ev), []string{"headers", "isBase64Encoded", "multiValueHeaders", "multiValueQueryStringParameters", "queryStringParameters", "requestContext"}; !slices.Equal(got, want) {
		t.Errorf("CONNECT keys = %v, want %v", got, want)
	}
	recorded := lambdaTestdata(t, "apigw-websocket-request.json")["requestContext"].(map[string]any)
	wantCtx := []string{"apiId", "connectedAt", "connectionId", "domainName", "eventType", "extendedRequestId", "identity",
		"messageDirection", "requestId", "requestTime", "requestTimeEpoch", "routeKey", "stage"}
	if got := keys(ev["requestContext"]); !slices.Equal(got, wantCtx) {
		t.Errorf("CONNECT requestContext keys = %v, want %v", got, wantCtx)
	}
	for _, k := range wantCtx {
		if _, ok := recorded[k]; !ok {
			t.Errorf("requestContext.%s is not in the recorded connect event", k)
		}
	}
	rc := conn.ev.RequestContext
	if rc.RouteKey != "$connect" || rc.EventType != "CONNECT" || rc.MessageDirection != "IN" || rc.Stage != "prod" ||
		rc.APIID != "dl7ptocha9" || rc.DomainName != host || rc.RequestID != rc.ExtendedRequestID || !isID(rc.RequestID) {
		t.Errorf("CONNECT requestContext = %+v", rc)
	}
	if rc.Identity.SourceIP != "127.0.0.1" || rc.Identity.UserAgent != "shape-test/1.0" {
		t.Errorf("identity = %+v", rc.Identity)
	}
	if rc.ConnectedAt < before || rc.RequestTimeEpoch < rc.ConnectedAt || rc.RequestTimeEpoch > time.Now().UnixMilli() {
		t.Errorf("connectedAt %d, requestTimeEpoch %d: not around %d", rc.ConnectedAt, rc.RequestTimeEpoch, before)
	}
	if ts, err := time.Parse("02/Jan/2006:15:04:05 -0700", rc.RequestTime); err != nil || ts.Unix() != rc.RequestTimeEpoch/1000 {
		t.Errorf("requestTime %q (%v) does not match requestTimeEpoch %d", rc.RequestTime, err, rc.RequestTimeEpoch)
	}
	h := conn.ev.Headers
	if h["Host"] != host || h["X-Custom"] != "a" || h["Sec-Websocket-Version"] != "13" || h["Sec-Websocket-Key"] == "" ||
		h["X-Forwarded-For"] != "127.0.0.1" || h["X-Forwarded-Proto"] != "http" || !strings.HasPrefix(h["X-Amzn-Trace-Id"], "Root=1-") {
		t.Errorf("headers = %v", h)
	}
	if !slices.Equal(conn.ev.MultiValueHeaders["X-Custom"], []string{"a"}) {
		t.Errorf("multiValueHeaders = %v", conn.ev.MultiValueHeaders)
	}
	if q := conn.ev.QueryStringParameters; q["name"] != "me" || q["x"] != "2" || len(q) != 2 {
		t.Errorf("queryStringParameters = %v", q)
	}
	if q := conn.ev.MultiValueQueryStringParameters; !slices.Equal(q["x"], []string{"1", "2"}) || !slices.Equal(q["name"], []string{"me"}) {
		t.Errorf("multiValueQueryStringParameters = %v", q)
	}

	// MESSAGE: exactly the recorded message event's fields.
	send(t, c, "{\r\n\t\"a\": 1\r\n}")
	msg := testenv.Recv(t, f.messages, wait, "the MESSAGE event")
	want := lambdaTestdata(t, "apigw-websocket-request-send-message.json")
	got := decode(t, msg.raw)
	if !slices.Equal(keys(got), keys(want)) {
		t.Errorf("MESSAGE keys = %v, want %v", keys(got), keys(want))
	}
	if !slices.Equal(keys(got["requestContext"]), keys(want["requestContext"])) {
		t.Errorf("MESSAGE requestContext keys = %v, want %v", keys(got["requestContext"]), keys(want["requestContext"]))
	}
	mrc := msg.ev.RequestContext
	if msg.ev.Body != "{\r\n\t\"a\": 1\r\n}" || msg.ev.IsBase64Encoded || mrc.RouteKey != "$default" || mrc.EventType != "MESSAGE" ||
		mrc.ConnectionID != id || mrc.ConnectedAt != rc.ConnectedAt || mrc.RequestID == rc.RequestID {
		t.Errorf("MESSAGE = %+v", msg.ev)
	}
	if mid, _ := mrc.MessageID.(string); !isID(mid) {
		t.Errorf("messageId %v is not in API Gateway's form", mrc.MessageID)
	}

	// DISCONNECT: exactly the recorded disconnect event's fields.
	if err := c.Close(websocket.StatusGoingAway, ""); err != nil {
		t.Fatal(err)
	}
	disc := testenv.Recv(t, f.disconnects, wait, "the DISCONNECT event")
	want = lambdaTestdata(t, "apigw-websocket-request-disconnect.json")
	got = decode(t, disc.raw)
	for _, k := range []string{"", "requestContext", "headers", "multiValueHeaders"} {
		g, w := got, want
		if k != "" {
			g, _ = got[k].(map[string]any)
			w, _ = want[k].(map[string]any)
		}
		if !slices.Equal(keys(g), keys(w)) {
			t.Errorf("DISCONNECT %s keys = %v, want %v", k, keys(g), keys(w))
		}
	}
	drc := disc.ev.RequestContext
	if drc.RouteKey != "$disconnect" || drc.EventType != "DISCONNECT" || drc.DisconnectStatusCode != 1001 ||
		drc.DisconnectReason == nil || *drc.DisconnectReason != "" || drc.ConnectionID != id || disc.ev.Headers["Host"] != host {
		t.Errorf("DISCONNECT = %+v", disc.ev)
	}
}

func TestConnectRefused(t *testing.T) {
	f := start(t, emulator.Options{}, func(ctx context.Context, ev events.APIGatewayWebsocketProxyRequest) (events.APIGatewayProxyResponse, error) {
		if ev.RequestContext.EventType == "CONNECT" {
			switch ev.QueryStringParameters["token"] {
			case "":
				return events.APIGatewayProxyResponse{StatusCode: 401, Headers: map[string]string{"WWW-Authenticate": "Bearer"}, Body: "no token"}, nil
			case "boom":
				return events.APIGatewayProxyResponse{}, errors.New("boom")
			}
		}
		return events.APIGatewayProxyResponse{StatusCode: 200}, nil
	})
	dial := func(query string) (*http.Response, error) {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		c, resp, err := websocket.Dial(ctx, f.url+query, nil)
		if err == nil {
			c.CloseNow()
			t.Fatalf("dial %q: connected", query)
		}
		return resp, err
	}

	resp, _ := dial("")
	if resp == nil || resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") != "Bearer" {
		t.Fatalf("refused handshake answered %+v", resp)
	}
	if body, _ := io.ReadAll(resp.Body); string(body) != "no token" {
		t.Errorf("body %q, want the $connect response's", body)
	}

	resp, _ = dial("?token=boom")
	if resp == nil || resp.StatusCode != 500 {
		t.Fatalf("failed $connect answered %+v", resp)
	}
	if body, _ := io.ReadAll(resp.Body); string(body) != `{"message": "Internal server error"}` {
		t.Errorf("body %q", body)
	}

	// Neither attempt became a connection, so neither gets a $disconnect.
	testenv.Recv(t, f.connects, wait, "the first $connect")
	testenv.Recv(t, f.connects, wait, "the second $connect")
	if ids := f.em.Connections(); len(ids) != 0 {
		t.Errorf("Connections() = %v", ids)
	}
	_, ok := f.dial(t, "?token=ok", nil)
	if got := f.em.Connections(); !slices.Equal(got, []string{ok.id()}) {
		t.Errorf("Connections() = %v, want only %s", got, ok.id())
	}
	select {
	case d := <-f.disconnects:
		t.Errorf("$disconnect for a refused connection: %+v", d.ev)
	default:
	}

	// A request that is no WebSocket handshake is not a connection.
	r, err := f.srv.Client().Get(f.endpoint)
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.StatusCode != http.StatusUpgradeRequired {
		t.Errorf("plain GET answered %s", r.Status)
	}
}

func TestSubprotocol(t *testing.T) {
	f := start(t, emulator.Options{}, func(ctx context.Context, ev events.APIGatewayWebsocketProxyRequest) (events.APIGatewayProxyResponse, error) {
		resp := events.APIGatewayProxyResponse{StatusCode: 200}
		if ev.RequestContext.EventType == "CONNECT" {
			for _, p := range strings.Split(ev.Headers["Sec-Websocket-Protocol"], ",") {
				if strings.TrimSpace(p) == "edgesync.v1" {
					resp.Headers = map[string]string{"Sec-WebSocket-Protocol": "edgesync.v1", "X-Server": "emulated"}
				}
			}
		}
		return resp, nil
	})

	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, f.url, &websocket.DialOptions{Subprotocols: []string{"other", "edgesync.v1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	if c.Subprotocol() != "edgesync.v1" || resp.Header.Get("X-Server") != "emulated" {
		t.Errorf("subprotocol %q, headers %v", c.Subprotocol(), resp.Header)
	}

	// A $connect that answers no subprotocol accepts the handshake without
	// one, as API Gateway does; it is the client's to refuse it.
	c2, _, err := websocket.Dial(ctx, f.url, &websocket.DialOptions{Subprotocols: []string{"unknown"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.CloseNow()
	if c2.Subprotocol() != "" {
		t.Errorf("subprotocol %q, want none", c2.Subprotocol())
	}
}

func TestRouteSelection(t *testing.T) {
	reply := func(ctx context.Context, ev events.APIGatewayWebsocketProxyRequest) (events.APIGatewayProxyResponse, error) {
		resp := events.APIGatewayProxyResponse{StatusCode: 200}
		if ev.RequestContext.EventType == "MESSAGE" && ev.Body != "quiet" {
			resp.Body = ev.RequestContext.RouteKey + " " + ev.Body
		}
		return resp, nil
	}
	f := start(t, emulator.Options{Routes: []string{"sendmessage", "join"}, RouteResponses: []string{"sendmessage", "join", "$default"}}, reply)
	c, _ := f.dial(t, "", nil)
	for _, tc := range []struct{ body, route string }{
		{`{"action":"sendmessage","data":1}`, "sendmessage"},
		{`{"action":"join"}`, "join"},
		{`{"action":"other"}`, "$default"},
		{`{"action":5}`, "$default"},
		{`{"action":{"x":"join"}}`, "$default"},
		{`not json`, "$default"},
		{`["join"]`, "$default"},
		{`{"Action":"join"}`, "$default"},
	} {
		send(t, c, tc.body)
		if _, got := read(t, c); got != tc.route+" "+tc.body {
			t.Errorf("%s: client received %q, want route %s", tc.body, got, tc.route)
		}
		ev := testenv.Recv(t, f.messages, wait, "the message")
		if ev.ev.RequestContext.RouteKey != tc.route {
			t.Errorf("%s: routeKey %q, want %q", tc.body, ev.ev.RequestContext.RouteKey, tc.route)
		}
	}
	// An empty body is not sent to the client: the next frame it receives
	// is the answer to the next message.
	send(t, c, "quiet")
	send(t, c, "loud")
	if _, got := read(t, c); got != "$default loud" {
		t.Errorf("client received %q after a message answered without a body", got)
	}

	g := start(t, emulator.Options{RouteSelectionExpression: "$request.body.meta.kind", Routes: []string{"x"}, RouteResponses: []string{"x", "$default"}}, reply)
	c2, _ := g.dial(t, "", nil)
	send(t, c2, `{"meta":{"kind":"x"}}`)
	if _, got := read(t, c2); got != `x {"meta":{"kind":"x"}}` {
		t.Errorf("dotted path: client received %q", got)
	}
	send(t, c2, `{"kind":"x"}`)
	if _, got := read(t, c2); got != `$default {"kind":"x"}` {
		t.Errorf("dotted path: client received %q", got)
	}

	for _, expr := range []string{"$request.header.x", "action", "$request.body.", "$request.body.a..b"} {
		if _, err := emulator.New(emulator.Options{Handler: recorder{}, RouteSelectionExpression: expr}); err == nil {
			t.Errorf("New accepted route selection expression %q", expr)
		}
	}
}

func TestRouteResponses(t *testing.T) {
	reply := func(ctx context.Context, ev events.APIGatewayWebsocketProxyRequest) (events.APIGatewayProxyResponse, error) {
		if ev.RequestContext.EventType != "MESSAGE" {
			return events.APIGatewayProxyResponse{StatusCode: 200}, nil
		}
		return events.APIGatewayProxyResponse{StatusCode: 400, Body: "answer on " + ev.RequestContext.RouteKey}, nil
	}
	dropped := "emulator: response body dropped: the route has no route response"

	t.Run("one-way by default", func(t *testing.T) {
		logs := make(logRecords, 64)
		f := start(t, emulator.Options{Routes: []string{"join"}, Logger: slog.New(logs)}, reply)
		c, conn := f.dial(t, "", nil)
		for _, tc := range []struct{ body, route string }{{`{"action":"join"}`, "join"}, {"hello", "$default"}} {
			send(t, c, tc.body)
			if a := awaitLog(t, logs, dropped); a["route"] != tc.route || a["body"] != "answer on "+tc.route || a["status"] != "400" {
				t.Errorf("%s: logged %v", tc.body, a)
			}
		}
		// The client received neither answer: the first frame it gets is
		// a post made after both were dropped.
		if _, err := f.client(f.endpoint).PostToConnection(context.Background(), &apigatewaymanagementapi.PostToConnectionInput{
			ConnectionId: aws.String(conn.id()), Data: []byte("posted"),
		}); err != nil {
			t.Fatal(err)
		}
		if _, got := read(t, c); got != "posted" {
			t.Errorf("client received %q, want only the post", got)
		}
	})

	t.Run("two-way routes", func(t *testing.T) {
		logs := make(logRecords, 64)
		f := start(t, emulator.Options{Routes: []string{"join", "leave"}, RouteResponses: []string{"join"}, Logger: slog.New(logs)}, reply)
		c, _ := f.dial(t, "", nil)
		send(t, c, `{"action":"leave"}`)
		awaitLog(t, logs, dropped)
		send(t, c, `{"action":"join"}`)
		if _, got := read(t, c); got != "answer on join" {
			t.Errorf("client received %q, want the answer on the two-way route", got)
		}

		g := start(t, emulator.Options{RouteResponses: []string{"$default"}}, reply)
		c2, _ := g.dial(t, "", nil)
		send(t, c2, "hello")
		if _, got := read(t, c2); got != "answer on $default" {
			t.Errorf("client received %q with a $default route response", got)
		}
	})

	for _, keys := range [][]string{{"other"}, {"$connect"}, {""}} {
		if _, err := emulator.New(emulator.Options{Handler: recorder{}, Routes: []string{"join"}, RouteResponses: keys}); err == nil {
			t.Errorf("New accepted route responses %q", keys)
		}
	}
}

func TestIntegrationError(t *testing.T) {
	f := start(t, emulator.Options{InvokeTimeout: 200 * time.Millisecond}, func(ctx context.Context, ev events.APIGatewayWebsocketProxyRequest) (events.APIGatewayProxyResponse, error) {
		switch ev.Body {
		case "fail":
			return events.APIGatewayProxyResponse{}, errors.New("function failed")
		case "panic":
			panic("function panicked")
		case "slow":
			<-ctx.Done() // the integration timeout
			return events.APIGatewayProxyResponse{}, ctx.Err()
		}
		return events.APIGatewayProxyResponse{StatusCode: 200}, nil
	})
	c, conn := f.dial(t, "", nil)
	for _, body := range []string{"fail", "panic", "slow"} {
		send(t, c, body)
		ev := testenv.Recv(t, f.messages, wait, "the message")
		_, got := read(t, c)
		want := `{"message": "Internal server error", "connectionId":"` + conn.id() + `", "requestId":"` + ev.ev.RequestContext.RequestID + `"}`
		if got != want {
			t.Errorf("%s: client received %s, want %s", body, got, want)
		}
	}
	send(t, c, "fine")
	testenv.Recv(t, f.messages, wait, "a message after the errors")
}

// rawHandler is a Lambda function answering raw bytes.
type rawHandler func(ctx context.Context, payload []byte) ([]byte, error)

func (h rawHandler) Invoke(ctx context.Context, payload []byte) ([]byte, error) {
	return h(ctx, payload)
}

func TestMalformedResponse(t *testing.T) {
	f := start(t, emulator.Options{RouteResponses: []string{"$default"}, Handler: rawHandler(func(ctx context.Context, payload []byte) ([]byte, error) {
		var ev events.APIGatewayWebsocketProxyRequest
		_ = json.Unmarshal(payload, &ev)
		switch ev.Body {
		case "":
			return []byte(`{"statusCode":200}`), nil
		case "null":
			return []byte(`null`), nil // a function returning nothing
		case "b64":
			return []byte(`{"statusCode":200,"isBase64Encoded":true,"body":"AP8="}`), nil
		}
		return []byte(`"not a response"`), nil
	})}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	c, _, err := websocket.Dial(ctx, f.url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	send(t, c, "null")
	send(t, c, "b64")
	if typ, got := read(t, c); typ != websocket.MessageBinary || got != "\x00\xff" {
		t.Errorf("base64 body: received %v %q", typ, got)
	}
	send(t, c, "bad")
	if _, got := read(t, c); !strings.HasPrefix(got, `{"message": "Internal server error", "connectionId":`) {
		t.Errorf("malformed response: received %q", got)
	}
}

func TestLimits(t *testing.T) {
	f := start(t, emulator.Options{}, nil)

	t.Run("frame over 32 KB", func(t *testing.T) {
		c, conn := f.dial(t, "", nil)
		send(t, c, strings.Repeat("x", emulator.MaxFrameSize+1)) // one frame
		if code := closed(t, c); code != websocket.StatusMessageTooBig {
			t.Errorf("closed with %v, want 1009", code)
		}
		d := awaitDisconnect(t, f, conn.id())
		if d.DisconnectStatusCode != 1009 {
			t.Errorf("$disconnect code %d", d.DisconnectStatusCode)
		}
	})

	t.Run("message of 128 KB in 32 KB frames", func(t *testing.T) {
		c, conn := f.dial(t, "", nil)
		writeFrames(t, c, emulator.MaxMessageSize, emulator.MaxFrameSize)
		m := testenv.Recv(t, f.messages, wait, "the 128 KB message")
		if len(m.ev.Body) != emulator.MaxMessageSize || m.id() != conn.id() {
			t.Errorf("received %d bytes", len(m.ev.Body))
		}
	})

	t.Run("message over 128 KB", func(t *testing.T) {
		c, conn := f.dial(t, "", nil)
		writeFrames(t, c, emulator.MaxMessageSize+1, emulator.MaxFrameSize)
		if code := closed(t, c); code != websocket.StatusMessageTooBig {
			t.Errorf("closed with %v, want 1009", code)
		}
		if d := awaitDisconnect(t, f, conn.id()); d.DisconnectStatusCode != 1009 {
			t.Errorf("$disconnect code %d", d.DisconnectStatusCode)
		}
	})

	t.Run("binary frame", func(t *testing.T) {
		c, conn := f.dial(t, "", nil)
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		if err := c.Write(ctx, websocket.MessageBinary, []byte{1, 2, 3}); err != nil {
			t.Fatal(err)
		}
		if code := closed(t, c); code != websocket.StatusUnsupportedData {
			t.Errorf("closed with %v, want 1003", code)
		}
		if d := awaitDisconnect(t, f, conn.id()); d.DisconnectStatusCode != 1003 {
			t.Errorf("$disconnect code %d", d.DisconnectStatusCode)
		}
	})
}

// writeFrames sends one text message of size bytes in frames of at most
// frame bytes.
func writeFrames(t *testing.T, c *websocket.Conn, size, frame int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	w, err := c.Writer(ctx, websocket.MessageText)
	if err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte("y"), frame)
	for size > 0 {
		n := min(size, frame)
		if _, err := w.Write(chunk[:n]); err != nil {
			return // the server may close first
		}
		size -= n
	}
	_ = w.Close()
}

// awaitDisconnect returns the requestContext of the $disconnect for id.
func awaitDisconnect(t *testing.T, f *fixture, id string) events.APIGatewayWebsocketProxyRequestContext {
	t.Helper()
	for {
		d := testenv.Recv(t, f.disconnects, wait, "the $disconnect of "+id)
		if d.id() == id {
			return d.ev.RequestContext
		}
	}
}

func TestTimeouts(t *testing.T) {
	t.Run("idle", func(t *testing.T) {
		f := start(t, emulator.Options{IdleTimeout: 100 * time.Millisecond}, nil)
		c, conn := f.dial(t, "", nil)
		if code := closed(t, c); code != websocket.StatusGoingAway {
			t.Errorf("closed with %v, want 1001", code)
		}
		d := awaitDisconnect(t, f, conn.id())
		if d.DisconnectStatusCode != 1001 || *d.DisconnectReason != "Going away" {
			t.Errorf("$disconnect %d %q", d.DisconnectStatusCode, *d.DisconnectReason)
		}
	})
	t.Run("max duration", func(t *testing.T) {
		f := start(t, emulator.Options{MaxDuration: 100 * time.Millisecond}, nil)
		c, conn := f.dial(t, "", nil)
		if code := closed(t, c); code != websocket.StatusGoingAway {
			t.Errorf("closed with %v, want 1001", code)
		}
		if d := awaitDisconnect(t, f, conn.id()); d.DisconnectStatusCode != 1001 {
			t.Errorf("$disconnect %d", d.DisconnectStatusCode)
		}
	})
}

func TestDisconnectCodes(t *testing.T) {
	f := start(t, emulator.Options{}, nil)

	c, conn := f.dial(t, "", nil)
	if err := c.Close(4000, "bye"); err != nil {
		t.Fatal(err)
	}
	if d := awaitDisconnect(t, f, conn.id()); d.DisconnectStatusCode != 4000 || *d.DisconnectReason != "bye" {
		t.Errorf("client close: $disconnect %d %q", d.DisconnectStatusCode, *d.DisconnectReason)
	}

	c, conn = f.dial(t, "", nil)
	_ = c.CloseNow() // dropped without a close frame
	if d := awaitDisconnect(t, f, conn.id()); d.DisconnectStatusCode != 1006 {
		t.Errorf("dropped client: $disconnect %d", d.DisconnectStatusCode)
	}

	c, conn = f.dial(t, "", nil)
	code := make(chan websocket.StatusCode, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		_, _, err := c.Read(ctx)
		code <- websocket.CloseStatus(err)
	}()
	if err := f.em.Close(); err != nil { // returns once the client has answered the close
		t.Fatal(err)
	}
	if code := testenv.Recv(t, code, wait, "the client's close"); code != websocket.StatusGoingAway {
		t.Errorf("Close: client closed with %v", code)
	}
	if d := awaitDisconnect(t, f, conn.id()); d.DisconnectStatusCode != 1001 {
		t.Errorf("Close: $disconnect %d", d.DisconnectStatusCode)
	}
	if len(f.em.Connections()) != 0 {
		t.Errorf("connections left after Close: %v", f.em.Connections())
	}
}

func TestCloseAbandonsStuckInvocations(t *testing.T) {
	release := make(chan struct{})
	f := start(t, emulator.Options{InvokeTimeout: 100 * time.Millisecond}, func(ctx context.Context, ev events.APIGatewayWebsocketProxyRequest) (events.APIGatewayProxyResponse, error) {
		if ev.Body == "stuck" {
			<-release // ignoring ctx
		}
		return events.APIGatewayProxyResponse{StatusCode: 200}, nil
	})
	c, conn := f.dial(t, "", nil)
	send(t, c, "stuck")
	if _, got := read(t, c); !strings.HasPrefix(got, `{"message": "Internal server error"`) {
		t.Fatalf("client received %q, want the integration timeout's error frame", got)
	}

	code := make(chan websocket.StatusCode, 1)
	go func() { // the client answers the close
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		_, _, err := c.Read(ctx)
		code <- websocket.CloseStatus(err)
	}()
	start := time.Now()
	err := f.em.Close()
	if err == nil || !strings.Contains(err.Error(), "abandoning 1 invocation") {
		t.Errorf("Close: %v, want it to report the abandoned invocation", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Close took %v", d)
	}
	// The connection was closed and its $disconnect invoked all the same.
	if code := testenv.Recv(t, code, wait, "the client's close"); code != websocket.StatusGoingAway {
		t.Errorf("client closed with %v", code)
	}
	awaitDisconnect(t, f, conn.id())

	close(release)
	if err := f.em.Close(); err != nil {
		t.Errorf("Close once the invocation returned: %v", err)
	}
}
