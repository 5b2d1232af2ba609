package tests

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/coder/websocket"

	"github.com/edgesync/edgesync/apigw"
	"github.com/edgesync/edgesync/apigw/emulator"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/internal/testenv"
)

// bearerAuthorizer is a Lambda REQUEST authorizer for $connect: a client
// without a bearer token is unauthorized, mallory is denied, and anyone
// else is a member, the claims in the authorizer's context.
func bearerAuthorizer(r *http.Request) (map[string]any, error) {
	user, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	switch {
	case !ok || user == "":
		return nil, emulator.ErrUnauthorized
	case user == "mallory":
		return nil, errors.New("mallory is denied")
	}
	return map[string]any{"principalId": "user-" + user, "user": user, "role": "member"}, nil
}

// TestAPIGatewayAuthorizer runs an apigw.Handler behind an API whose
// $connect has a Lambda authorizer: Upgrade makes the authorizer's claims
// peer attributes, which every later invocation finds in the Registry.
func TestAPIGatewayAuthorizer(t *testing.T) {
	onEveryBackend(t, func(t *testing.T, b apiBackend) {
		hooks := edge.Hooks{
			Upgrade: func(r *http.Request) (edge.Accept, error) {
				claims := apigw.Authorizer(r)
				user, _ := claims["user"].(string)
				principal, _ := claims["principalId"].(string)
				role, _ := claims["role"].(string)
				if user == "" {
					return edge.Accept{}, &edge.Reject{Status: http.StatusForbidden, Body: "no claims"}
				}
				return edge.Accept{Namespace: "/auth", Attrs: map[string]string{"user": user, "principal": principal, "role": role}}, nil
			},
			Message: func(p edge.Peer, d edge.Data) {
				_ = p.Send(context.Background(), edge.Text(p.Attr("user")+" ("+p.Attr("principal")+", "+p.Attr("role")+"): "+string(d.Bytes)))
			},
		}
		a := startAuthorizedAPI(t, b, hooks, bearerAuthorizer)

		for _, tc := range []struct {
			header http.Header
			status int
			body   string
		}{
			{nil, http.StatusUnauthorized, `{"message":"Unauthorized"}`},
			{http.Header{"Authorization": {"Bearer mallory"}}, http.StatusForbidden, `{"message":"Forbidden"}`},
		} {
			ctx, cancel := context.WithTimeout(context.Background(), wait)
			c, resp, err := websocket.Dial(ctx, a.url, &websocket.DialOptions{HTTPHeader: tc.header})
			cancel()
			if err == nil {
				c.CloseNow()
				t.Fatalf("%v: connected, want %d", tc.header, tc.status)
			}
			if resp == nil {
				t.Fatalf("%v: no HTTP response: %v", tc.header, err)
			}
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.status || string(body) != tc.body {
				t.Fatalf("%v: refused with %d %s, want %d %s", tc.header, resp.StatusCode, body, tc.status, tc.body)
			}
		}
		if ids := a.emu.Connections(); len(ids) != 0 {
			t.Fatalf("refused clients are connections: %v", ids)
		}

		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		conn, _, err := websocket.Dial(ctx, a.url, &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer ann"}}})
		if err != nil {
			t.Fatal(err)
		}
		ann := readClient(t, conn, 16)
		id := testenv.Recv(t, a.opened, wait, "the Open of the authorized client")
		if c, err := b.registry.Get(ctx, id); err != nil || c.Attrs["user"] != "ann" || c.Namespace != "/auth" {
			t.Fatalf("Registry.Get(%s) = %+v, %v", id, c, err)
		}
		// Each message is an invocation of its own, which rebuilds the
		// peer and its attributes from the Registry.
		for _, text := range []string{"first", "second"} {
			ann.send(t, websocket.MessageText, text)
			if f := ann.next(t); f.data != "ann (user-ann, member): "+text {
				t.Fatalf("received %q", f.data)
			}
		}
	})
}

// authorizedAPI is an emulated API Gateway WebSocket API with a $connect
// authorizer, whose function is an apigw.Handler in process.
type authorizedAPI struct {
	emu    *emulator.Emulator
	url    string      // ws://host/stage
	opened chan string // the id of every peer whose Open has run
}

// startAuthorizedAPI starts an emulated API running hooks on b, its
// $connect guarded by authorizer.
func startAuthorizedAPI(t *testing.T, b apiBackend, hooks edge.Hooks, authorizer func(*http.Request) (map[string]any, error)) *authorizedAPI {
	t.Helper()
	logger := testLogger(t)
	srv := httptest.NewUnstartedServer(nil)
	host := srv.Listener.Addr().String()
	a := &authorizedAPI{url: "ws://" + host + "/" + apiStage, opened: make(chan string, 16)}
	gw, err := apigw.NewGateway(context.Background(), apigw.GatewayOptions{
		Registry: b.registry, Endpoint: "http://" + host + "/" + apiStage, Config: awsConfig(),
	})
	if err != nil {
		t.Fatal(err)
	}
	hub, err := edge.New(edge.Options{Sync: b.sync(t), PublishOnly: true, Gateway: gw})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hub.Close() })
	open := hooks.Open
	hooks.Open = func(p edge.Peer) {
		if open != nil {
			open(p)
		}
		a.opened <- p.ID()
	}
	h := apigw.NewHandler(hub, hooks, b.registry, gw)
	h.Logger = logger
	a.emu, err = emulator.New(emulator.Options{
		Stage:      apiStage,
		Handler:    emulator.NewHandler(h.Handle),
		Authorizer: authorizer,
		Logger:     logger,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv.Config.Handler = a.emu
	srv.Start()
	t.Cleanup(func() {
		if err := a.emu.Close(); err != nil { // every $disconnect runs while the hub is open
			t.Errorf("emulator: %v", err)
		}
		srv.Close()
	})
	return a
}
