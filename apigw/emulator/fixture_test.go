package emulator_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/apigatewaymanagementapi"
	"github.com/coder/websocket"

	"github.com/edgesync/edgesync/apigw/emulator"
	"github.com/edgesync/edgesync/internal/testenv"
)

// wait bounds every wait for something the emulator does.
const wait = 10 * time.Second

// recorded is one invocation the test's function received.
type recorded struct {
	raw []byte
	ev  events.APIGatewayWebsocketProxyRequest
}

// fn is a test's Lambda function; nil answers 200 with no body.
type fn func(ctx context.Context, ev events.APIGatewayWebsocketProxyRequest) (events.APIGatewayProxyResponse, error)

// fixture is an Emulator on a real HTTP server with a function that records
// every event it receives, by event type.
type fixture struct {
	em          *emulator.Emulator
	srv         *httptest.Server
	url         string // ws://host/stage
	endpoint    string // http://host/stage
	connects    chan recorded
	messages    chan recorded
	disconnects chan recorded
}

// recorder is a lambda.Handler that records the raw payloads it is given
// before handing them to the function.
type recorder struct {
	f     *fixture
	inner lambda.Handler
}

func (r recorder) Invoke(ctx context.Context, payload []byte) ([]byte, error) {
	var ev events.APIGatewayWebsocketProxyRequest
	if err := json.Unmarshal(payload, &ev); err == nil {
		rec := recorded{raw: payload, ev: ev}
		ch := r.f.messages
		switch ev.RequestContext.EventType {
		case "CONNECT":
			ch = r.f.connects
		case "DISCONNECT":
			ch = r.f.disconnects
		}
		select {
		case ch <- rec:
		default:
		}
	}
	return r.inner.Invoke(ctx, payload)
}

// start runs an Emulator configured by opts, with h as its function.
func start(t testing.TB, opts emulator.Options, h fn) *fixture {
	t.Helper()
	f := &fixture{
		connects:    make(chan recorded, 1024),
		messages:    make(chan recorded, 1024),
		disconnects: make(chan recorded, 1024),
	}
	if h == nil {
		h = func(context.Context, events.APIGatewayWebsocketProxyRequest) (events.APIGatewayProxyResponse, error) {
			return events.APIGatewayProxyResponse{StatusCode: 200}, nil
		}
	}
	if opts.Handler == nil {
		opts.Handler = recorder{f: f, inner: emulator.NewHandler(h)}
	}
	em, err := emulator.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	f.em = em
	f.srv = httptest.NewServer(em)
	stage := opts.Stage
	if stage == "" {
		stage = "local"
	}
	f.endpoint = f.srv.URL + "/" + stage
	f.url = "ws" + strings.TrimPrefix(f.endpoint, "http")
	t.Cleanup(func() {
		if err := em.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		f.srv.Close()
	})
	return f
}

// id is the connection id of the event.
func (r recorded) id() string { return r.ev.RequestContext.ConnectionID }

// dial connects a client, with query appended to the URL, and returns it
// with its $connect event.
func (f *fixture) dial(t testing.TB, query string, opts *websocket.DialOptions) (*websocket.Conn, recorded) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	c, _, err := websocket.Dial(ctx, f.url+query, opts)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	c.SetReadLimit(1 << 20)
	t.Cleanup(func() { _ = c.CloseNow() })
	return c, testenv.Recv(t, f.connects, wait, "the $connect event")
}

// client returns the AWS SDK's management API client for endpoint, as a
// function configures it, with retries off.
func (f *fixture) client(endpoint string) *apigatewaymanagementapi.Client {
	return apigatewaymanagementapi.New(apigatewaymanagementapi.Options{
		BaseEndpoint: aws.String(endpoint),
		Region:       "us-east-1",
		Credentials:  credentials.NewStaticCredentialsProvider("AKIDEXAMPLE", "SECRET", ""),
		Retryer:      aws.NopRetryer{},
		HTTPClient:   f.srv.Client(),
	})
}

// read returns the next message the client receives.
func read(t *testing.T, c *websocket.Conn) (websocket.MessageType, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	typ, b, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return typ, string(b)
}

// closed waits for the server to close the client and returns the close
// status the client received.
func closed(t *testing.T, c *websocket.Conn) websocket.StatusCode {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	for {
		_, _, err := c.Read(ctx)
		if err != nil {
			if ctx.Err() != nil {
				t.Fatalf("the connection was not closed within %v", wait)
			}
			return websocket.CloseStatus(err)
		}
	}
}

// send writes a text message.
func send(t *testing.T, c *websocket.Conn, msg string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// getJSON GETs url and decodes its JSON answer into v.
func getJSON(t *testing.T, client *http.Client, url string, v any) {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatal(err)
	}
}

// logRecords is a slog.Handler that sends every record, of any level, to a
// channel.
type logRecords chan slog.Record

func (logRecords) Enabled(context.Context, slog.Level) bool { return true }

func (l logRecords) Handle(_ context.Context, r slog.Record) error {
	select {
	case l <- r.Clone():
	default:
	}
	return nil
}

func (l logRecords) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l logRecords) WithGroup(string) slog.Handler      { return l }

// awaitLog returns the attributes of the next record logged with message
// msg.
func awaitLog(t *testing.T, l logRecords, msg string) map[string]string {
	t.Helper()
	for {
		r := testenv.Recv(t, l, wait, "the log line "+msg)
		if r.Message != msg {
			continue
		}
		attrs := map[string]string{}
		r.Attrs(func(a slog.Attr) bool {
			attrs[a.Key] = a.Value.String()
			return true
		})
		return attrs
	}
}
