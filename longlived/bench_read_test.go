package longlived_test

import (
	"context"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/coder/websocket"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/longlived"
)

// BenchmarkReadMessages measures the read loop: one client sends 32-byte
// binary messages to Hooks.Message, with the limits on what a peer sends
// turned off. Its allocations are those of the client's writes and of
// coder/websocket's reads; the handler adds none per message.
func BenchmarkReadMessages(b *testing.B) {
	hub, err := edge.New(edge.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { hub.Close() })
	var got atomic.Int64
	done := make(chan struct{})
	want := int64(b.N)
	h := longlived.New(hub, edge.Hooks{Message: func(edge.Peer, edge.Data) {
		if got.Add(1) == want {
			close(done)
		}
	}})
	h.MessagesPerSecond, h.BytesPerSecond, h.FramesPerSecond = -1, -1, -1
	srv := httptest.NewServer(h)
	defer srv.Close()
	defer h.Close(context.Background())
	ctx := context.Background()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+"/", nil)
	if err != nil {
		b.Fatal(err)
	}
	defer c.CloseNow()
	msg := make([]byte, 32)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if err := c.Write(ctx, websocket.MessageBinary, msg); err != nil {
			b.Fatal(err)
		}
	}
	<-done
}
