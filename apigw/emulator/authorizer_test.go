package emulator_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/edgesync/edgesync/apigw/emulator"
	"github.com/edgesync/edgesync/internal/testenv"
)

func TestAuthorizer(t *testing.T) {
	seen := make(chan *http.Request, 16)
	f := start(t, emulator.Options{
		InvokeTimeout: 500 * time.Millisecond,
		Authorizer: func(r *http.Request) (map[string]any, error) {
			seen <- r
			switch tok := r.URL.Query().Get("token"); tok {
			case "":
				return nil, fmt.Errorf("no token: %w", emulator.ErrUnauthorized)
			case "denied":
				return nil, errors.New("policy denies")
			case "nested":
				return map[string]any{"principalId": "x", "groups": []string{"a"}}, nil
			case "panic":
				panic("authorizer panicked")
			case "slow":
				<-r.Context().Done()
				return nil, r.Context().Err()
			default:
				return map[string]any{"principalId": tok, "user": tok, "level": 3, "admin": true}, nil
			}
		},
	}, nil)

	for _, tc := range []struct {
		query, body string
		status      int
	}{
		{"", `{"message":"Unauthorized"}`, http.StatusUnauthorized},
		{"?token=denied", `{"message":"Forbidden"}`, http.StatusForbidden},
		{"?token=nested", `{"message": "Internal server error"}`, http.StatusInternalServerError},
		{"?token=panic", `{"message": "Internal server error"}`, http.StatusInternalServerError},
		{"?token=slow", `{"message": "Internal server error"}`, http.StatusInternalServerError},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		c, resp, err := websocket.Dial(ctx, f.url+tc.query, nil)
		cancel()
		if err == nil {
			c.CloseNow()
			t.Fatalf("%q: connected", tc.query)
		}
		if resp == nil {
			t.Fatalf("%q: no response: %v", tc.query, err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != tc.status || string(body) != tc.body {
			t.Errorf("%q: answered %d %s, want %d %s", tc.query, resp.StatusCode, body, tc.status, tc.body)
		}
		testenv.Recv(t, seen, wait, "the authorizer's call")
	}

	// The authorizer sees the client's upgrade request; $connect and every
	// later event carry its context. No refused client reached $connect:
	// the first $connect is this one's.
	c, conn := f.dial(t, "?token=ann", &websocket.DialOptions{HTTPHeader: http.Header{"X-Auth": {"t0ken"}}})
	if r := testenv.Recv(t, seen, wait, "the authorizer's call"); r.Header.Get("X-Auth") != "t0ken" || r.URL.Path != "/local" {
		t.Errorf("the authorizer saw %s %v", r.URL, r.Header)
	}
	want := map[string]any{"principalId": "ann", "user": "ann", "level": float64(3), "admin": true}
	if got, _ := conn.ev.RequestContext.Authorizer.(map[string]any); !maps.Equal(got, want) || conn.ev.QueryStringParameters["token"] != "ann" {
		t.Errorf("$connect: authorizer %v, want %v", conn.ev.RequestContext.Authorizer, want)
	}
	send(t, c, "hello")
	msg := testenv.Recv(t, f.messages, wait, "the message")
	if got, _ := msg.ev.RequestContext.Authorizer.(map[string]any); !maps.Equal(got, want) {
		t.Errorf("message: authorizer %v, want %v", msg.ev.RequestContext.Authorizer, want)
	}
	if err := c.Close(websocket.StatusNormalClosure, ""); err != nil {
		t.Fatal(err)
	}
	disc := testenv.Recv(t, f.disconnects, wait, "the $disconnect")
	if got, _ := disc.ev.RequestContext.Authorizer.(map[string]any); disc.id() != conn.id() || !maps.Equal(got, want) {
		t.Errorf("$disconnect of %s: authorizer %v, want %v", disc.id(), disc.ev.RequestContext.Authorizer, want)
	}
	select {
	case d := <-f.disconnects:
		t.Errorf("a $disconnect for a refused client: %+v", d.ev)
	default:
	}

	// Without an authorizer, events have no authorizer field.
	g := start(t, emulator.Options{}, nil)
	_, plain := g.dial(t, "", nil)
	if _, ok := decode(t, plain.raw)["requestContext"].(map[string]any)["authorizer"]; ok {
		t.Errorf("an event without an authorizer has one: %s", plain.raw)
	}
}
