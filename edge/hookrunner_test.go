package edge_test

import (
	"bytes"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/edgesync/edgesync/edge"
)

// closeRecorder is a Peer that records how it was closed.
type closeRecorder struct {
	edge.Peer // nil: only ID, Namespace and Close are called
	code      int
	reason    string
}

func (p *closeRecorder) ID() string        { return "peer-1" }
func (p *closeRecorder) Namespace() string { return "/ns" }
func (p *closeRecorder) Close(code int, reason string) error {
	p.code, p.reason = code, reason
	return nil
}

func TestHookRunnerDefaultNamespaceIsTheURLPath(t *testing.T) {
	var hr edge.HookRunner
	for path, want := range map[string]string{"/_ws": "/_ws", "": "/", "/local": "/local"} {
		r := httptest.NewRequest(http.MethodGet, "http://example.com/", nil)
		r.URL.Path = path
		a, err := hr.Upgrade(r)
		if err != nil || a.Namespace != want {
			t.Errorf("path %q: namespace %q, %v; want %q", path, a.Namespace, err, want)
		}
	}
	hr.Hooks.Upgrade = func(*http.Request) (edge.Accept, error) { return edge.Accept{Namespace: "room"}, nil }
	if a, _ := hr.Upgrade(httptest.NewRequest(http.MethodGet, "/_ws", nil)); a.Namespace != "room" {
		t.Errorf("Accept.Namespace not kept: %q", a.Namespace)
	}
}

func TestHookRunnerRefusalsAndUpgradePanic(t *testing.T) {
	var logs bytes.Buffer
	hr := edge.HookRunner{Logger: slog.New(slog.NewTextHandler(&logs, nil)), Name: "test"}
	hr.Hooks.Upgrade = func(*http.Request) (edge.Accept, error) { return edge.Accept{}, &edge.Reject{Status: 401} }
	_, err := hr.Upgrade(httptest.NewRequest(http.MethodGet, "/", nil))
	var rej *edge.Reject
	if !errors.As(err, &rej) || rej.StatusCode() != 401 {
		t.Fatalf("refusal became %v", err)
	}
	hr.Hooks.Upgrade = func(*http.Request) (edge.Accept, error) { panic("upgrade bug") }
	_, err = hr.Upgrade(httptest.NewRequest(http.MethodGet, "/", nil))
	if !errors.As(err, &rej) || rej.StatusCode() != http.StatusInternalServerError {
		t.Fatalf("panic became %v", err)
	}
	if !strings.Contains(logs.String(), "test: Hooks.Upgrade panicked") || !strings.Contains(logs.String(), "upgrade bug") {
		t.Fatalf("panic not logged: %s", logs.String())
	}
}

func TestHookRunnerPanicClosesThePeerWith1011(t *testing.T) {
	var reported []error
	hr := edge.HookRunner{Hooks: edge.Hooks{
		Open:    func(edge.Peer) { panic("open bug") },
		Message: func(edge.Peer, edge.Data) {},
		Error:   func(p edge.Peer, err error) { reported = append(reported, err) },
	}}
	p := &closeRecorder{}
	if hr.Open(p) {
		t.Fatal("Open reported success for a panicking hook")
	}
	var pe *edge.PanicError
	if len(reported) != 1 || !errors.As(reported[0], &pe) || pe.Value != "open bug" {
		t.Fatalf("reported %v", reported)
	}
	if p.code != edge.StatusInternalError {
		t.Fatalf("closed with %d %q", p.code, p.reason)
	}
	if !hr.Message(p, edge.Text("x")) {
		t.Fatal("Message reported failure for a hook that returned")
	}
}

func TestHookRunnerErrorWithoutOrPanickingHookIsLogged(t *testing.T) {
	var logs bytes.Buffer
	hr := edge.HookRunner{Logger: slog.New(slog.NewTextHandler(&logs, nil))}
	hr.Error(&closeRecorder{}, errors.New("first"))
	hr.Hooks.Error = func(edge.Peer, error) { panic("error hook bug") }
	hr.Error(&closeRecorder{}, errors.New("second"))
	hr.Flush()
	for _, want := range []string{"first", "second", "error hook bug", "peer-1"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs.String())
		}
	}
}
