package apigw_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"

	"github.com/edgesync/edgesync/apigw"
	"github.com/edgesync/edgesync/drivers/memsync"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/internal/testenv"
)

// These tests call Handler.Handle with events as API Gateway sends them;
// tests/apigw_test.go runs the handler under the emulator with real clients.

// event returns an event of type typ ("CONNECT", "MESSAGE", "DISCONNECT")
// for connection id on stage "prod".
func event(typ, id string) events.APIGatewayWebsocketProxyRequest {
	route := map[string]string{"CONNECT": "$connect", "MESSAGE": "$default", "DISCONNECT": "$disconnect"}[typ]
	ev := events.APIGatewayWebsocketProxyRequest{
		RequestContext: events.APIGatewayWebsocketProxyRequestContext{
			RouteKey:         route,
			EventType:        typ,
			ConnectionID:     id,
			Stage:            "prod",
			DomainName:       "abc123.execute-api.us-east-1.amazonaws.com",
			APIID:            "abc123",
			ConnectedAt:      time.Now().UnixMilli(),
			RequestTimeEpoch: time.Now().UnixMilli(),
			Identity:         events.APIGatewayRequestIdentity{SourceIP: "192.0.2.1"},
		},
	}
	if typ == "CONNECT" {
		ev.Headers = map[string]string{"Host": "abc123.execute-api.us-east-1.amazonaws.com", "Sec-WebSocket-Protocol": "chat, other"}
		ev.MultiValueHeaders = map[string][]string{"Host": {ev.Headers["Host"]}, "Sec-WebSocket-Protocol": {"chat, other"}}
	}
	return ev
}

// lambdaEnv is one Lambda instance: a publish-only hub on a memsync bus,
// with a Gateway posting to a stand-in management API, and the Handler.
type lambdaEnv struct {
	api     *fakeAPI
	reg     edge.Registry
	gateway *apigw.Gateway
	hub     *edge.Hub
	handler *apigw.Handler
	errs    *testenv.ErrorLog
}

func newLambda(t *testing.T, bus *memsync.Bus, channel string, hooks edge.Hooks) *lambdaEnv {
	t.Helper()
	e := &lambdaEnv{api: newFakeAPI(t, "prod"), reg: memsync.NewRegistry(memsync.RegistryOptions{}), errs: testenv.NewErrorLog()}
	e.gateway = newGateway(t, e.reg, e.api, nil)
	opts := edge.Options{Gateway: e.gateway, PublishOnly: true, OnError: e.errs.OnError}
	if bus != nil {
		opts.Sync = memsync.New(memsync.Options{Bus: bus, Channel: channel})
	}
	hub, err := edge.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hub.Close() })
	e.hub = hub
	e.handler = apigw.NewHandler(hub, hooks, e.reg, e.gateway)
	return e
}

func (e *lambdaEnv) handle(t *testing.T, ev events.APIGatewayWebsocketProxyRequest) events.APIGatewayProxyResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	resp, err := e.handler.Handle(ctx, ev)
	if err != nil {
		t.Fatalf("Handle(%s): %v", ev.RequestContext.EventType, err)
	}
	return resp
}

func TestConnectRecordsTheConnectionAndRunsOpen(t *testing.T) {
	var sendErr error
	hooks := edge.Hooks{
		Upgrade: func(r *http.Request) (edge.Accept, error) {
			user, _ := apigw.Authorizer(r)["user"].(string)
			return edge.Accept{
				Attrs:  map[string]string{"user": user, "room": r.URL.Query().Get("room"), "ip": r.RemoteAddr},
				Header: http.Header{"Sec-Websocket-Protocol": {"chat"}},
			}, nil
		},
		Open: func(p edge.Peer) {
			_ = p.Subscribe(context.Background(), p.Attr("room"))
			sendErr = p.Send(context.Background(), edge.Text("too early"))
		},
	}
	e := newLambda(t, nil, "", hooks)
	ev := event("CONNECT", "conn-A=")
	ev.QueryStringParameters = map[string]string{"room": "lobby"}
	ev.MultiValueQueryStringParameters = map[string][]string{"room": {"lobby"}}
	ev.RequestContext.Authorizer = map[string]any{"user": "ann", "principalId": "ann"}
	resp := e.handle(t, ev)
	if resp.StatusCode != http.StatusOK || resp.Headers["Sec-WebSocket-Protocol"] != "chat" {
		t.Fatalf("response %d %v", resp.StatusCode, resp.Headers)
	}
	c, err := e.reg.Get(context.Background(), "conn-A=")
	if err != nil {
		t.Fatal(err)
	}
	// The default namespace is the path of the URL the client connected
	// to, as on a long-lived server: "/" and the stage.
	if c.Namespace != "/prod" || c.Attrs["user"] != "ann" || c.Attrs["room"] != "lobby" || !strings.HasPrefix(c.Attrs["ip"], "192.0.2.1:") {
		t.Fatalf("recorded %+v", c)
	}
	if ttl := c.ExpiresAt.Sub(c.ConnectedAt); ttl != edge.DefaultConnTTL {
		t.Fatalf("expires after %v, want %v", ttl, edge.DefaultConnTTL)
	}
	if topics, _ := e.reg.Topics(context.Background(), "conn-A="); len(topics) != 1 || topics[0] != "lobby" {
		t.Fatalf("topics %v", topics)
	}
	if !errors.Is(sendErr, apigw.ErrNotConnected) {
		t.Fatalf("Send during Open: %v, want ErrNotConnected", sendErr)
	}
	if got := e.gateway.Endpoint(); got != e.api.endpoint() {
		t.Fatalf("endpoint %q changed from the option %q", got, e.api.endpoint())
	}
}

func TestConnectRefusedWithTheRejectsResponse(t *testing.T) {
	e := newLambda(t, nil, "", edge.Hooks{
		Upgrade: func(*http.Request) (edge.Accept, error) {
			return edge.Accept{}, &edge.Reject{Status: 401, Body: "who are you", Header: http.Header{"Www-Authenticate": {"Bearer"}}}
		},
		Open: func(edge.Peer) { t.Error("Open ran for a refused connection") },
	})
	resp := e.handle(t, event("CONNECT", "conn-R="))
	if resp.StatusCode != 401 || resp.Body != "who are you" || resp.Headers["Www-Authenticate"] != "Bearer" {
		t.Fatalf("response %+v", resp)
	}
	if _, err := e.reg.Get(context.Background(), "conn-R="); !errors.Is(err, edge.ErrNotFound) {
		t.Fatalf("a refused connection was recorded: %v", err)
	}
}

// A message from one gateway peer reaches the topic's other gateway peers
// through the Gateway, and peers on other instances through the backplane,
// before Handle returns.
func TestMessagePublishesEverywhereBeforeReturning(t *testing.T) {
	var bus memsync.Bus
	channel := testenv.Channel(t)
	hooks := edge.Hooks{
		Upgrade: func(*http.Request) (edge.Accept, error) { return edge.Accept{Namespace: "/chat"}, nil },
		Open:    func(p edge.Peer) { _ = p.Subscribe(context.Background(), "room") },
		Message: func(p edge.Peer, d edge.Data) { _ = p.Publish(context.Background(), "room", d) },
	}
	e := newLambda(t, &bus, channel, hooks)

	// A long-lived instance on the same backplane, with one member.
	vm, err := edge.New(edge.Options{Sync: memsync.New(memsync.Options{Bus: &bus, Channel: channel})})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Close() })
	in := &recorder{}
	m, err := vm.Join(edge.NewID(), "/chat", in)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Subscribe("room"); err != nil {
		t.Fatal(err)
	}

	for _, id := range []string{"conn-A=", "conn-B=", "conn-C="} {
		if resp := e.handle(t, event("CONNECT", id)); resp.StatusCode != 200 {
			t.Fatalf("connect %s: %+v", id, resp)
		}
	}
	ev := event("MESSAGE", "conn-A=")
	ev.Body = "hello"
	if resp := e.handle(t, ev); resp.StatusCode != 200 {
		t.Fatalf("message: %+v", resp)
	}
	// Handle has returned: everything was posted and relayed already.
	for id, want := range map[string]int{"conn-A=": 0, "conn-B=": 1, "conn-C=": 1} {
		if n, body := e.api.postsTo(id); n != want || (n > 0 && body != "hello") {
			t.Errorf("%s got %d posts (%q), want %d", id, n, body, want)
		}
	}
	if got := in.all(); len(got) != 1 || got[0] != "hello" {
		t.Errorf("the long-lived member got %q", got)
	}
}

func TestDisconnectRunsCloseAndForgets(t *testing.T) {
	type closed struct {
		ns, user string
		code     int
		reason   string
	}
	got := make(chan closed, 1)
	e := newLambda(t, nil, "", edge.Hooks{
		Upgrade: func(*http.Request) (edge.Accept, error) {
			return edge.Accept{Attrs: map[string]string{"user": "bob"}}, nil
		},
		Open:  func(p edge.Peer) { _ = p.Subscribe(context.Background(), "room") },
		Close: func(p edge.Peer, code int, reason string) { got <- closed{p.Namespace(), p.Attr("user"), code, reason} },
	})
	e.handle(t, event("CONNECT", "conn-D="))
	ev := event("DISCONNECT", "conn-D=")
	ev.RequestContext.DisconnectStatusCode = 1001
	reason := "Going away"
	ev.RequestContext.DisconnectReason = &reason
	if resp := e.handle(t, ev); resp.StatusCode != 200 {
		t.Fatalf("disconnect: %+v", resp)
	}
	if c := testenv.Recv(t, got, testTimeout, "Hooks.Close"); c != (closed{"/prod", "bob", 1001, "Going away"}) {
		t.Fatalf("Hooks.Close got %+v", c)
	}
	if _, err := e.reg.Get(context.Background(), "conn-D="); !errors.Is(err, edge.ErrNotFound) {
		t.Fatalf("still recorded: %v", err)
	}
	if ids := subscribers(t, e.reg, "/prod", "room"); len(ids) != 0 {
		t.Fatalf("subscriptions left: %v", ids)
	}
}

func TestMalformedEventsGetAClearResponse(t *testing.T) {
	e := newLambda(t, nil, "", edge.Hooks{Message: func(edge.Peer, edge.Data) { t.Error("Message ran for a malformed event") }})
	bare := newLambda(t, nil, "", edge.Hooks{})
	bare.handle(t, event("CONNECT", "conn-N="))
	if resp := bare.handle(t, event("MESSAGE", "conn-N=")); resp.StatusCode != 400 || !strings.Contains(resp.Body, "no Message hook") {
		t.Errorf("a message without a Message hook: %d %q", resp.StatusCode, resp.Body)
	}
	e.handle(t, event("CONNECT", "conn-M="))
	noID := event("MESSAGE", "")
	unknown := event("MESSAGE", "conn-M=")
	unknown.RequestContext.EventType = "UPGRADE"
	badBase64 := event("MESSAGE", "conn-M=")
	badBase64.Body, badBase64.IsBase64Encoded = "!!!", true
	badText := event("MESSAGE", "conn-M=")
	badText.Body = "\xff\xfe"
	stranger := event("MESSAGE", "conn-unknown=")
	e.handler.Routes = []string{"sendmessage"}
	custom := event("MESSAGE", "conn-M=")
	custom.RequestContext.RouteKey = "sendmessage"
	custom.Body = "\xff"
	otherRoute := event("MESSAGE", "conn-M=")
	otherRoute.RequestContext.RouteKey = "nosuchroute"
	for name, c := range map[string]struct {
		ev     events.APIGatewayWebsocketProxyRequest
		status int
		says   string
	}{
		"no connection id":   {noID, 400, "connection id"},
		"unknown event type": {unknown, 400, "UPGRADE"},
		"bad base64":         {badBase64, 400, "base64"},
		"invalid UTF-8":      {badText, 400, "UTF-8"},
		"unknown connection": {stranger, 410, "unknown connection"},
		"unknown route":      {otherRoute, 400, "nosuchroute"},
		"listed route":       {custom, 400, "UTF-8"},
	} {
		resp := e.handle(t, c.ev)
		if resp.StatusCode != c.status || !strings.Contains(resp.Body, c.says) {
			t.Errorf("%s: %d %q, want %d saying %q", name, resp.StatusCode, resp.Body, c.status, c.says)
		}
	}
}

func TestPanickingHooksAreRecoveredAndReported(t *testing.T) {
	reported := make(chan error, 4)
	closedWith := make(chan int, 4)
	e := newLambda(t, nil, "", edge.Hooks{
		Upgrade: func(r *http.Request) (edge.Accept, error) {
			return edge.Accept{Attrs: map[string]string{"panic": r.URL.Query().Get("panic")}}, nil
		},
		Open: func(p edge.Peer) {
			if p.Attr("panic") == "open" {
				panic("open bug")
			}
		},
		Message: func(edge.Peer, edge.Data) { panic("message bug") },
		Close:   func(_ edge.Peer, code int, _ string) { closedWith <- code },
		Error:   func(_ edge.Peer, err error) { reported <- err },
	})

	// A panic in Open refuses the connection: 500, nothing recorded, and
	// Hooks.Close is its end, since no $disconnect follows.
	ev := event("CONNECT", "conn-P1=")
	ev.QueryStringParameters = map[string]string{"panic": "open"}
	if resp := e.handle(t, ev); resp.StatusCode != 500 {
		t.Fatalf("connect with a panicking Open: %+v", resp)
	}
	var pe *edge.PanicError
	if err := testenv.Recv(t, reported, testTimeout, "the Open panic"); !errors.As(err, &pe) || pe.Value != "open bug" {
		t.Fatalf("reported %v", err)
	}
	if code := testenv.Recv(t, closedWith, testTimeout, "Hooks.Close"); code != edge.StatusInternalError {
		t.Fatalf("closed with %d", code)
	}
	if _, err := e.reg.Get(context.Background(), "conn-P1="); !errors.Is(err, edge.ErrNotFound) {
		t.Fatalf("recorded after a panicking Open: %v", err)
	}

	// A panic in Message is reported and deletes the connection.
	e.handle(t, event("CONNECT", "conn-P2="))
	msg := event("MESSAGE", "conn-P2=")
	msg.Body = "boom"
	e.handle(t, msg)
	if err := testenv.Recv(t, reported, testTimeout, "the Message panic"); !errors.As(err, &pe) || pe.Value != "message bug" {
		t.Fatalf("reported %v", err)
	}
	e.api.mu.Lock()
	deleted := e.api.gone["conn-P2="] != ""
	e.api.mu.Unlock()
	if !deleted {
		t.Fatal("the panicking peer's connection was not deleted")
	}
}

func TestEndpointLearnedFromTheFirstEvent(t *testing.T) {
	t.Setenv(apigw.EndpointEnv, "")
	reg := memsync.NewRegistry(memsync.RegistryOptions{})
	g := newGateway(t, reg, nil, nil)
	hub, err := edge.New(edge.Options{Gateway: g, PublishOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer hub.Close()
	h := apigw.NewHandler(hub, edge.Hooks{}, reg, g)
	if _, err := h.Handle(context.Background(), event("CONNECT", "conn-E=")); err != nil {
		t.Fatal(err)
	}
	if want := "https://abc123.execute-api.us-east-1.amazonaws.com/prod"; g.Endpoint() != want {
		t.Fatalf("endpoint %q, want %q", g.Endpoint(), want)
	}
}

// recorder is an edge.Endpoint that keeps the text it is given.
type recorder struct {
	mu  sync.Mutex
	got []string
}

func (r *recorder) Deliver(d edge.Data) {
	r.mu.Lock()
	r.got = append(r.got, string(d.Bytes))
	r.mu.Unlock()
}

func (r *recorder) Close(int, string) error { return nil }

func (r *recorder) all() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.got...)
}

func TestSendToAGatewayPeer(t *testing.T) {
	e := newLambda(t, nil, "", edge.Hooks{})
	e.handle(t, event("CONNECT", "conn-S="))
	ctx := context.Background()
	if err := e.hub.SendTo(ctx, "conn-S=", edge.Text("just you")); err != nil {
		t.Fatal(err)
	}
	if n, body := e.api.postsTo("conn-S="); n != 1 || body != "just you" {
		t.Fatalf("posted %d times, %q", n, body)
	}
	// Gone meanwhile, or never here: not the sender's error.
	e.api.setGone("conn-S=", true)
	if err := e.hub.SendTo(ctx, "conn-S=", edge.Text("again")); err != nil {
		t.Fatalf("SendTo a gone connection: %v", err)
	}
	if err := e.hub.SendTo(ctx, "conn-nobody=", edge.Text("x")); err != nil {
		t.Fatalf("SendTo an unknown connection: %v", err)
	}
}

// A post that finds the connection gone comes before its $disconnect: Close
// still gets the peer's namespace and attributes.
func TestDisconnectAfterAGonePost(t *testing.T) {
	type closed struct{ ns, user string }
	got := make(chan closed, 1)
	e := newLambda(t, nil, "", edge.Hooks{
		Upgrade: func(*http.Request) (edge.Accept, error) {
			return edge.Accept{Namespace: "/chat", Attrs: map[string]string{"user": "ann"}}, nil
		},
		Open:  func(p edge.Peer) { _ = p.Subscribe(context.Background(), "room") },
		Close: func(p edge.Peer, _ int, _ string) { got <- closed{p.Namespace(), p.Attr("user")} },
	})
	ev := event("CONNECT", "conn-G=")
	ev.RequestContext.ConnectedAt = time.Now().Add(-time.Hour).UnixMilli() // long past its $connect
	e.handle(t, ev)
	e.api.setGone("conn-G=", true)
	if err := e.hub.Publish(context.Background(), edge.Message{Namespace: "/chat", Topic: "room", Data: edge.Text("x")}); err != nil {
		t.Fatal(err)
	}
	if err := e.hub.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if ids := subscribers(t, e.reg, "/chat", "room"); len(ids) != 0 {
		t.Fatalf("the gone connection is still subscribed: %v", ids)
	}
	e.handle(t, event("DISCONNECT", "conn-G="))
	if c := testenv.Recv(t, got, testTimeout, "Hooks.Close"); c != (closed{"/chat", "ann"}) {
		t.Fatalf("Close got %+v", c)
	}
}
