package longlived_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/coder/websocket"

	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/longlived"
)

// records is a slog.Handler that keeps every record.
type records struct {
	mu   sync.Mutex
	list []slog.Record
}

func (r *records) Enabled(context.Context, slog.Level) bool { return true }
func (r *records) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *records) WithGroup(string) slog.Handler            { return r }
func (r *records) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	r.list = append(r.list, rec)
	r.mu.Unlock()
	return nil
}

func (r *records) attr(i int, key string) slog.Value {
	r.mu.Lock()
	defer r.mu.Unlock()
	var v slog.Value
	r.list[i].Attrs(func(a slog.Attr) bool {
		if a.Key == key {
			v = a.Value
			return false
		}
		return true
	})
	return v
}

func TestPeerErrorsWithoutAnErrorHookAreLoggedOncePerKind(t *testing.T) {
	hub, err := edge.New(edge.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hub.Close() })
	subscribed := make(chan struct{})
	h := longlived.New(hub, edge.Hooks{Open: func(p edge.Peer) {
		if err := p.Subscribe(context.Background(), "t"); err != nil {
			panic(err)
		}
		close(subscribed)
	}})
	log := &records{}
	h.Logger = slog.New(log)
	h.WriteQueueBytes = 1000
	srv := httptest.NewServer(h)
	defer srv.Close()

	c, _, err := websocket.Dial(context.Background(), "ws"+strings.TrimPrefix(srv.URL, "http")+"/s", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	c.CloseRead(context.Background()) // answers the close handshake
	<-subscribed
	const n = 100
	huge := edge.Text(strings.Repeat("x", 2000)) // larger than the write queue: dropped and reported
	for range n {
		if err := hub.Publish(context.Background(), edge.Message{Namespace: "/s", Topic: "t", Data: huge}); err != nil {
			t.Fatal(err)
		}
	}
	// Close waits for the peer, and so for its reports, then flushes the log.
	if err := h.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	log.mu.Lock()
	got := len(log.list)
	log.mu.Unlock()
	if got != 2 {
		t.Fatalf("%d log lines for %d errors of one kind, want 2 (the first, then the count)", got, n)
	}
	if err, _ := log.attr(0, "err").Any().(error); !errors.Is(err, longlived.ErrMessageTooLarge) {
		t.Fatalf("first line's err = %v", log.attr(0, "err"))
	}
	if rep := log.attr(1, "repeated").Int64(); rep != n-1 {
		t.Fatalf("second line counts %d repeats, want %d", rep, n-1)
	}
}
