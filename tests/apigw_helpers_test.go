package tests

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/apigatewaymanagementapi"
	"github.com/coder/websocket"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/edgesync/edgesync/apigw"
	"github.com/edgesync/edgesync/apigw/emulator"
	"github.com/edgesync/edgesync/drivers/memsync"
	"github.com/edgesync/edgesync/drivers/pgsync"
	"github.com/edgesync/edgesync/drivers/redissync"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/internal/testenv"
)

// apiStage is the stage of every emulated API.
const apiStage = "test"

// apiBackend is what the instances of one test share: the Registry of the
// gateway-held connections and a backplane channel.
type apiBackend struct {
	registry edge.Registry
	sync     func(t *testing.T) edge.Sync // the Sync of one more instance on the channel
}

// onEveryBackend runs test as a parallel subtest on each backend, memsync,
// Redis and Postgres, each on a channel of its own.
func onEveryBackend(t *testing.T, test func(t *testing.T, b apiBackend)) {
	t.Parallel()
	for _, name := range []string{"memsync", "redis", "postgres"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			test(t, openBackend(t, name))
		})
	}
}

// openBackend opens the Registry and channel of the backend name.
func openBackend(t *testing.T, name string) apiBackend {
	t.Helper()
	channel := testenv.Channel(t)
	switch name {
	case "memsync":
		bus := new(memsync.Bus)
		return apiBackend{
			registry: memsync.NewRegistry(memsync.RegistryOptions{}),
			sync:     func(*testing.T) edge.Sync { return memsync.New(memsync.Options{Bus: bus, Channel: channel}) },
		}
	case "redis":
		url := testenv.RedisURL(t)
		opts, err := redis.ParseURL(url)
		if err != nil {
			t.Fatal(err)
		}
		client := redis.NewClient(opts)
		t.Cleanup(func() { client.Close() })
		reg, err := redissync.NewRegistry(redissync.RegistryOptions{Client: client, Channel: channel})
		if err != nil {
			t.Fatal(err)
		}
		return apiBackend{registry: reg, sync: func(t *testing.T) edge.Sync { return redisSync(t, url, channel) }}
	case "postgres":
		url := testenv.PostgresURL(t)
		pool, err := pgxpool.New(context.Background(), url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		reg, err := pgsync.NewRegistry(pgsync.RegistryOptions{Pool: pool, Channel: channel})
		if err != nil {
			t.Fatal(err)
		}
		return apiBackend{registry: reg, sync: func(*testing.T) edge.Sync {
			return pgsync.New(pgsync.Options{ConnString: url, Channel: channel})
		}}
	}
	t.Fatalf("unknown backend %q", name)
	return apiBackend{}
}

// apiGateway is an API Gateway WebSocket API under the emulator, on a real
// HTTP server, whose function is an apigw.Handler in process, wired as
// examples/chat-lambda wires it: a publish-only hub on the backplane, with a
// Gateway that posts through the real AWS SDK client.
type apiGateway struct {
	emu      *emulator.Emulator
	hub      *edge.Hub
	reg      edge.Registry
	errs     *testenv.ErrorLog // the hub's OnError
	url      string            // ws://host/stage, where clients connect
	endpoint string            // http://host/stage, the management API
	opened   chan string       // the id of every peer whose Open has run
	gone     chan string       // the ids the Gateway found gone (OnGone)

	mu      sync.Mutex
	handled map[string]int // invocations returned, by event type and connection id
	changed chan struct{}  // closed, and replaced, at every invocation's return
}

// startAPIGateway starts an emulated API running hooks on b. Its
// invocations run at once, as on as many Lambda instances. configure, if
// not nil, adjusts the Gateway's options.
func startAPIGateway(t *testing.T, b apiBackend, hooks edge.Hooks, configure func(*apigw.GatewayOptions)) *apiGateway {
	t.Helper()
	logger := testLogger(t)
	srv := httptest.NewUnstartedServer(nil)
	host := srv.Listener.Addr().String()
	a := &apiGateway{
		reg:      b.registry,
		errs:     testenv.NewErrorLog(),
		url:      "ws://" + host + "/" + apiStage,
		endpoint: "http://" + host + "/" + apiStage,
		opened:   make(chan string, 64),
		gone:     make(chan string, 64),
		handled:  make(map[string]int),
		changed:  make(chan struct{}),
	}
	opts := apigw.GatewayOptions{Registry: b.registry, Endpoint: a.endpoint, Config: awsConfig(), OnGone: func(id string) { a.gone <- id }}
	if configure != nil {
		configure(&opts)
	}
	gw, err := apigw.NewGateway(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	a.hub, err = edge.New(edge.Options{Sync: b.sync(t), PublishOnly: true, Gateway: gw, OnError: a.errs.OnError})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.hub.Close() })

	open := hooks.Open
	hooks.Open = func(p edge.Peer) {
		if open != nil {
			open(p)
		}
		a.opened <- p.ID()
	}
	h := apigw.NewHandler(a.hub, hooks, b.registry, gw)
	h.Logger = logger
	a.emu, err = emulator.New(emulator.Options{Stage: apiStage, Handler: emulator.NewHandler(a.function(h)), Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	srv.Config.Handler = a.emu
	srv.Start()
	t.Cleanup(func() {
		a.emu.Close() // every $disconnect runs while the hub is open
		srv.Close()
	})
	return a
}

// function is h.Handle, counting the invocations that have returned.
func (a *apiGateway) function(h *apigw.Handler) func(context.Context, events.APIGatewayWebsocketProxyRequest) (events.APIGatewayProxyResponse, error) {
	return func(ctx context.Context, ev events.APIGatewayWebsocketProxyRequest) (events.APIGatewayProxyResponse, error) {
		resp, err := h.Handle(ctx, ev)
		a.mu.Lock()
		a.handled[ev.RequestContext.EventType+" "+ev.RequestContext.ConnectionID]++
		close(a.changed)
		a.changed = make(chan struct{})
		a.mu.Unlock()
		return resp, err
	}
}

// awaitHandled waits until n invocations of the event type typ ("MESSAGE",
// "DISCONNECT") for the connection id have returned: what they published
// has been posted by then, since the Handler flushes before it returns.
func (a *apiGateway) awaitHandled(t *testing.T, typ, id string, n int) {
	t.Helper()
	timeout := time.After(wait)
	for {
		a.mu.Lock()
		got, changed := a.handled[typ+" "+id], a.changed
		a.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-changed:
		case <-timeout:
			t.Fatalf("%d of %d %s invocations for %s returned within %v", got, n, typ, id, wait)
		}
	}
}

// publish publishes d on topic in namespace server-side, from the hub of
// the function, and waits until it has been posted.
func (a *apiGateway) publish(t *testing.T, namespace, topic string, d edge.Data) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := a.hub.Publish(ctx, edge.Message{Namespace: namespace, Topic: topic, Data: d}); err != nil {
		t.Fatal(err)
	}
	if err := a.hub.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}

// management returns a client of the emulated management API, the AWS SDK's
// own, for checks that go around the Gateway.
func (a *apiGateway) management() *apigatewaymanagementapi.Client {
	return apigatewaymanagementapi.NewFromConfig(*awsConfig(), func(o *apigatewaymanagementapi.Options) {
		o.BaseEndpoint = aws.String(a.endpoint)
	})
}

// awsConfig is the AWS configuration of the emulated API: it takes any
// credentials, but the SDK needs some to sign with.
func awsConfig() *aws.Config {
	return &aws.Config{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("test", "test", "")}
}

// apiClient is a WebSocket client of an emulated API, with the id API
// Gateway gave its connection.
type apiClient struct {
	*client
	id string
}

// dial connects a client at the API's URL with query ("" or "?…"), and
// waits for its Open hook, which has run once the handshake is over.
func (a *apiGateway) dial(t *testing.T, query string, opts *websocket.DialOptions) *apiClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, a.url+query, opts)
	if err != nil {
		t.Fatalf("dial %s: %v", a.url+query, err)
	}
	return a.client(t, conn)
}

// client starts reading from conn, a connection to the API whose Open hook
// has run or is running, and waits for that Open.
func (a *apiGateway) client(t *testing.T, conn *websocket.Conn) *apiClient {
	t.Helper()
	c := readClient(t, conn, 64)
	return &apiClient{client: c, id: testenv.Recv(t, a.opened, wait, "the Open of a dialled client")}
}

// expect fails t unless the next message c receives is the text want.
func (c *apiClient) expect(t *testing.T, want string) {
	t.Helper()
	if f := c.next(t); f.typ != websocket.MessageText || f.data != want {
		t.Fatalf("client %s received %v %.80q, want text %.80q", c.id, f.typ, f.data, want)
	}
}

// sendFragmented sends data as one text message in frames of at most
// emulator.MaxFrameSize bytes, API Gateway's frame limit. It stops at the
// first write that fails: the emulator may close the connection first.
func (c *apiClient) sendFragmented(t *testing.T, data []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	w, err := c.conn.Writer(ctx, websocket.MessageText)
	if err != nil {
		t.Fatal(err)
	}
	for len(data) > 0 {
		n := min(len(data), emulator.MaxFrameSize)
		if _, err := w.Write(data[:n]); err != nil {
			return
		}
		data = data[n:]
	}
	_ = w.Close()
}

// roomHooks are the hooks of a chat room whose namespace is "/" and the
// query parameter room, and whose peers carry the query parameter user as
// the attribute "user": every peer is subscribed to "chat", and what it
// sends is published there.
func roomHooks() edge.Hooks {
	return edge.Hooks{
		Upgrade: func(r *http.Request) (edge.Accept, error) {
			q := r.URL.Query()
			return edge.Accept{Namespace: "/" + q.Get("room"), Attrs: map[string]string{"user": q.Get("user")}}, nil
		},
		Open: func(p edge.Peer) {
			if err := p.Subscribe(context.Background(), "chat"); err != nil {
				_ = p.Close(1011, "cannot subscribe")
			}
		},
		Message: func(p edge.Peer, d edge.Data) {
			_ = p.Publish(context.Background(), "chat", d)
		},
	}
}

// testLogger returns a logger that writes to t's log until t's cleanups have
// run, and drops what comes later (an error log may release held-back lines
// on a timer).
func testLogger(t *testing.T) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(w.stop) // first registered, so run last
	return slog.New(slog.NewTextHandler(w, nil))
}

type testWriter struct {
	mu      sync.Mutex
	t       *testing.T
	stopped bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.stopped {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

func (w *testWriter) stop() {
	w.mu.Lock()
	w.stopped = true
	w.mu.Unlock()
}
