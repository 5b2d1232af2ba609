package longlived_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/edgesync/edgesync/drivers/memsync"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/internal/testenv"
	"github.com/edgesync/edgesync/longlived"
)

// delivery is a message as Hooks.Message saw it, and when.
type delivery struct {
	data string
	at   time.Duration // since the test began
}

// A client that sends faster than its budget is slowed down, not closed:
// every message arrives, in order, and never sooner than the budget allows.
func TestInboundLimitPacesWithoutLoss(t *testing.T) {
	for _, tc := range []struct {
		name      string
		configure func(*longlived.Handler)
		messages  int
		size      int
		rate      float64 // of the limit that applies, in its unit
		burst     float64
		cost      func(d delivery) float64
	}{
		{
			name: "messages",
			configure: func(h *longlived.Handler) {
				h.MessagesPerSecond, h.InboundBurst = 50, 100*time.Millisecond
			},
			messages: 40, size: 1, rate: 50, burst: 5,
			cost: func(delivery) float64 { return 1 },
		},
		{
			name: "bytes, each message larger than the burst",
			configure: func(h *longlived.Handler) {
				h.BytesPerSecond, h.InboundBurst = 64<<10, 100*time.Millisecond
			},
			messages: 16, size: 8 << 10, rate: 64 << 10, burst: 64 << 10 / 10,
			cost: func(d delivery) float64 { return float64(len(d.data)) },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			begin := time.Now()
			got := make(chan delivery, tc.messages)
			s := start(t, edge.Hooks{Message: func(p edge.Peer, d edge.Data) {
				got <- delivery{d.String(), time.Since(begin)}
			}}, tc.configure)
			c, _ := s.dial(t, "/")
			want := make([]string, tc.messages)
			for i := range want {
				want[i] = fmt.Sprintf("%0*d", tc.size, i)
			}
			go func() { // the writes block once TCP holds the client back
				for _, msg := range want {
					if c.Write(context.Background(), websocket.MessageText, []byte(msg)) != nil {
						return
					}
				}
			}()
			var spent float64
			for i, msg := range want {
				d := recv(t, got, "Hooks.Message")
				if d.data != msg {
					t.Fatalf("message %d: got %.8q…, want %.8q…", i, d.data, msg)
				}
				spent += tc.cost(d)
				if allowed := tc.burst + tc.rate*d.at.Seconds(); spent > allowed {
					t.Fatalf("message %d at %v: %.0f spent, more than the %.0f allowed", i, d.at, spent, allowed)
				}
			}
		})
	}
}

// tally counts what Hooks.Message received from one peer.
type tally struct{ messages, bytes atomic.Int64 }

// Two clients flood, one with tiny messages, one with binary ones, while
// two others chat across two hubs over memsync. The flooders are paced to
// their budgets; the chat loses nothing, and no reader is evicted. The
// limits are lower than the defaults, so that pacing, not the CPU of a
// loaded machine, is what holds the flooders back.
func TestFloodersArePacedAcrossHubs(t *testing.T) {
	const (
		messagesPerSecond = 300
		bytesPerSecond    = 256 << 10
		inboundBurst      = 250 * time.Millisecond
	)
	begin := time.Now()
	var bus memsync.Bus
	channel := testenv.Channel(t)
	hubErrors := testenv.NewErrorLog()
	var mu sync.Mutex
	tallies := make(map[string]*tally) // by role
	peerErrors := make(chan errorEvent, 64)
	hooks := edge.Hooks{
		Upgrade: func(r *http.Request) (edge.Accept, error) {
			return edge.Accept{Attrs: map[string]string{"role": r.URL.Query().Get("role")}}, nil
		},
		Open: func(p edge.Peer) {
			if !strings.HasPrefix(p.Attr("role"), "flood") {
				_ = p.Subscribe(context.Background(), "t")
			}
		},
		Message: func(p edge.Peer, d edge.Data) {
			mu.Lock()
			n := tallies[p.Attr("role")]
			if n == nil {
				n = new(tally)
				tallies[p.Attr("role")] = n
			}
			mu.Unlock()
			n.messages.Add(1)
			n.bytes.Add(int64(len(d.Bytes)))
			_ = p.Publish(context.Background(), "t", d)
		},
		Error: func(p edge.Peer, err error) { peerErrors <- errorEvent{p, err} },
	}
	urls := make([]string, 2)
	for i := range urls {
		hub, err := edge.New(edge.Options{
			Sync:    memsync.New(memsync.Options{Bus: &bus, Channel: channel}),
			OnError: hubErrors.OnError,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { hub.Close() })
		h := longlived.New(hub, hooks)
		h.PingInterval = 0
		h.MessagesPerSecond, h.BytesPerSecond, h.InboundBurst = messagesPerSecond, bytesPerSecond, inboundBurst
		srv := httptest.NewServer(h)
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), wait)
			defer cancel()
			if err := h.Close(ctx); err != nil {
				t.Errorf("Handler.Close: %v", err)
			}
			srv.Close()
		})
		urls[i] = "ws" + strings.TrimPrefix(srv.URL, "http") + "/"
	}

	// The flooders: each writes as fast as its connection lets it.
	ctx, stop := context.WithCancel(context.Background())
	var flooders sync.WaitGroup
	var written [2]atomic.Int64
	for i, f := range []struct {
		role string
		typ  websocket.MessageType
		msg  []byte
	}{
		{"flood-tiny", websocket.MessageText, []byte("f")},
		{"flood-binary", websocket.MessageBinary, make([]byte, 4<<10)},
	} {
		c := dialOpts(t, urls[i]+"?role="+f.role, nil)
		flooders.Go(func() {
			for c.Write(ctx, f.typ, f.msg) == nil {
				written[i].Add(1)
			}
		})
	}

	// The chat: alice on one hub, bob on the other, each waiting for the
	// other's message before sending the next.
	type chatter struct {
		c   *websocket.Conn
		got chan string
	}
	chatters := make([]chatter, 2)
	for i := range chatters {
		ch := chatter{dialOpts(t, urls[i]+"?role=chat", nil), make(chan string, 16)}
		chatters[i] = ch
		go func() {
			defer close(ch.got)
			for {
				typ, b, err := ch.c.Read(context.Background())
				if err != nil {
					return
				}
				if typ == websocket.MessageText && strings.HasPrefix(string(b), "chat ") {
					ch.got <- string(b)
				}
			}
		}()
	}
	// The chat goes on until each flooder has sent four bursts' worth: the
	// limits have held it back for a while, not only its first burst.
	const minRounds = 100
	burst := inboundBurst.Seconds()
	sustained := func() bool {
		mu.Lock()
		defer mu.Unlock()
		tiny, binary := tallies["flood-tiny"], tallies["flood-binary"]
		return tiny != nil && binary != nil &&
			float64(tiny.messages.Load()) > 4*burst*messagesPerSecond &&
			float64(binary.bytes.Load()) > 4*burst*bytesPerSecond
	}
	deadline := time.Now().Add(3 * wait)
	for i := 0; i < minRounds || !sustained(); i++ {
		if time.Now().After(deadline) {
			t.Fatalf("after %d rounds of chat the flooders had not sent four bursts' worth", i)
		}
		for from, to := range []int{1, 0} {
			msg := fmt.Sprintf("chat %d from %d", i, from)
			send(t, chatters[from].c, websocket.MessageText, msg)
			if got := recv(t, chatters[to].got, "chat"); got != msg {
				t.Fatalf("round %d: chatter %d got %q (empty once disconnected), want %q", i, to, got, msg)
			}
		}
	}

	mu.Lock()
	tiny, binary := tallies["flood-tiny"], tallies["flood-binary"]
	mu.Unlock()
	if tiny == nil || binary == nil {
		t.Fatal("a flooder's messages never reached Hooks.Message")
	}
	// Counts first, then the time: the bound can only be looser.
	messages, bytes := tiny.messages.Load(), binary.bytes.Load()
	elapsed := time.Since(begin).Seconds()
	stop()
	flooders.Wait()
	if allowed := messagesPerSecond * (burst + elapsed); float64(messages) > allowed {
		t.Errorf("tiny flooder: %d messages reached Hooks.Message in %.2fs, more than the %.0f allowed", messages, elapsed, allowed)
	}
	if allowed := bytesPerSecond * (burst + elapsed); float64(bytes) > allowed {
		t.Errorf("binary flooder: %d bytes reached Hooks.Message in %.2fs, more than the %.0f allowed", bytes, elapsed, allowed)
	}
	t.Logf("in %.2fs: tiny flooder wrote %d messages, %d delivered; binary flooder wrote %d bytes, %d delivered",
		elapsed, written[0].Load(), messages, written[1].Load()*4<<10, bytes)
	for len(peerErrors) > 0 {
		ev := <-peerErrors
		if errors.Is(ev.err, longlived.ErrSlowConsumer) || ev.peer.Attr("role") == "chat" {
			t.Errorf("Hooks.Error(%s %s, %v)", ev.peer.Attr("role"), ev.peer.ID(), ev.err)
		}
	}
	if errs := hubErrors.Errors(testenv.AnyStage); len(errs) > 0 {
		t.Errorf("the hubs reported %v", errs)
	}
}

// A peer that goes on flooding queues its pong behind its own backlog,
// which the read loop paces: it is alive, and is not dropped for the pong
// that comes late, however many ping timeouts its backlog lasts.
func TestLongFloodIsPacedNotDropped(t *testing.T) {
	const rate = 100
	received := make(chan struct{}, 2*rate)
	s := start(t, edge.Hooks{Message: func(edge.Peer, edge.Data) {
		select {
		case received <- struct{}{}:
		default:
		}
	}}, func(h *longlived.Handler) {
		h.MessagesPerSecond = rate
		h.PingInterval, h.PingTimeout = 100*time.Millisecond, 300*time.Millisecond
	})
	c, p := s.dial(t, "/")
	c.CloseRead(context.Background()) // the client answers pings, as browsers do
	flooding := make(chan struct{})
	go func() {
		defer close(flooding)
		for c.Write(context.Background(), websocket.MessageText, []byte("f")) == nil {
		}
	}()
	// 2 × rate messages take about 2 s at the paced rate (less the
	// burst): several ping timeouts, each without a pong.
	for range cap(received) {
		select {
		case <-received:
		case ev := <-s.errs:
			t.Fatalf("Hooks.Error(%s, %v) while flooding, want none", ev.peer.ID(), ev.err)
		case ev := <-s.closed:
			t.Fatalf("peer closed with %d while flooding", ev.code)
		case <-time.After(wait):
			t.Fatal("the flooder's messages stopped arriving")
		}
	}
	c.CloseNow()
	<-flooding
	s.expectClosed(t, p, 1006)
}
