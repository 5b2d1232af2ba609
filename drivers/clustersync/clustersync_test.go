package clustersync

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgesync/edgesync/drivers/drivertest"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/envelope"
	"github.com/edgesync/edgesync/internal/testenv"
)

// waitTimeout bounds every wait of these tests: a test that meets it has
// failed, and a test that works never waits for it.
const waitTimeout = 15 * time.Second

// socketPath returns the path of a socket in a new, short temporary
// directory (a socket path must fit in about 100 bytes, which t.TempDir
// paths may not), removed when t ends.
func socketPath(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "cs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "s")
}

func TestConformance(t *testing.T) {
	drivertest.RunDriverTests(t, socketPerChannel())
}

// socketPerChannel returns a function for drivertest that builds the Sync of
// one more instance of channel, on a socket of the channel's own.
func socketPerChannel() func(tb testing.TB, channel string) edge.Sync {
	var mu sync.Mutex
	sockets := make(map[string]string) // channel → socket
	return func(tb testing.TB, channel string) edge.Sync {
		mu.Lock()
		defer mu.Unlock()
		socket, ok := sockets[channel]
		if !ok {
			socket = socketPath(tb)
			sockets[channel] = socket
		}
		return New(Options{Socket: socket, Channel: channel})
	}
}

// recorder is an instance's deliveries.
type recorder struct {
	mu     sync.Mutex
	msgs   []edge.Message
	notify chan struct{}
}

func newRecorder() *recorder { return &recorder{notify: make(chan struct{}, 1)} }

func (r *recorder) deliver(m edge.Message) {
	r.mu.Lock()
	r.msgs = append(r.msgs, m)
	r.mu.Unlock()
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

func (r *recorder) texts() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	texts := make([]string, len(r.msgs))
	for i, m := range r.msgs {
		texts[i] = string(m.Data.Bytes)
	}
	return texts
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.msgs)
}

func (r *recorder) has(text string) bool {
	for _, s := range r.texts() {
		if s == text {
			return true
		}
	}
	return false
}

// waitFor waits until cond holds, rechecking it after every delivery, and
// fails t after waitTimeout.
func (r *recorder) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	timer := time.NewTimer(waitTimeout)
	defer timer.Stop()
	for !cond() {
		select {
		case <-r.notify:
		case <-timer.C:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// instance is one subscribed driver, what it received and what it reported.
type instance struct {
	*driver
	rec *recorder
	log *testenv.ErrorLog
}

// start builds and subscribes a driver, closed when t ends.
func start(t *testing.T, opts Options) instance {
	t.Helper()
	in := build(t, opts)
	if err := in.Subscribe(context.Background(), in.rec.deliver); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	return in
}

// build builds a driver without subscribing it, closed when t ends.
func build(t *testing.T, opts Options) instance {
	t.Helper()
	if opts.Channel == "" {
		opts.Channel = "test"
	}
	log := testenv.NewErrorLog()
	d, err := New(opts)(edge.Instance{ID: edge.NewID(), Report: log.Report})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return instance{d.(*driver), newRecorder(), log}
}

func publish(t *testing.T, in instance, text string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := in.Publish(ctx, edge.Message{Namespace: "/ns", Topic: "t", Data: edge.Text(text)}); err != nil {
		t.Fatalf("Publish %q: %v", text, err)
	}
}

// probe publishes from from until to receives one of the probes: the way to
// wait for a cluster that is electing a relay.
func probe(t *testing.T, from, to instance) {
	t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	prefix := "probe-" + from.inst.ID + "-"
	for i := 0; ; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		from.Publish(ctx, edge.Message{Namespace: "/ns", Topic: "t", Data: edge.Text(fmt.Sprint(prefix, i))})
		cancel()
		select {
		case <-tick.C:
		case <-deadline.C:
			t.Fatalf("no probe got through within %v", waitTimeout)
		}
		for _, s := range to.rec.texts() {
			if strings.HasPrefix(s, prefix) {
				return
			}
		}
	}
}

func TestNewValidates(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
		want string
	}{
		{"no socket", Options{Channel: "c"}, "Socket is required"},
		{"no channel", Options{Socket: "/tmp/s"}, "Channel is required"},
		{"long socket", Options{Socket: "/" + strings.Repeat("s", 200)}, "socket path of 201 bytes"},
		{"long channel", Options{Socket: "/tmp/s", Channel: strings.Repeat("c", 256)}, "channel name of 256 bytes"},
		{"queue below one frame", Options{Socket: "/tmp/s", Channel: "c", MaxMessageBytes: 1000, MaxQueueBytes: 100}, "MaxQueueBytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.opts)(edge.Instance{ID: edge.NewID()})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: got error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestFirstInstanceRelays(t *testing.T) {
	socket := socketPath(t)
	a := start(t, Options{Socket: socket})
	b := start(t, Options{Socket: socket})
	if !a.isRelay() || b.isRelay() {
		t.Fatalf("relay roles: a %v, b %v; want a only", a.isRelay(), b.isRelay())
	}
	publish(t, a, "from a")
	publish(t, b, "from b")
	b.rec.waitFor(t, "b to receive a's message", func() bool { return b.rec.has("from a") })
	a.rec.waitFor(t, "a to receive b's message", func() bool { return a.rec.has("from b") })
	if a.rec.has("from a") || b.rec.has("from b") {
		t.Fatalf("an instance received its own message: a %q, b %q", a.rec.texts(), b.rec.texts())
	}
}

func TestPublishErrors(t *testing.T) {
	socket := socketPath(t)
	ctx := context.Background()
	msg := edge.Message{Namespace: "/ns", Topic: "t", Data: edge.Text("x")}

	t.Run("before Subscribe", func(t *testing.T) {
		in := build(t, Options{Socket: socket})
		if err := in.Publish(ctx, msg); !errors.Is(err, ErrNotConnected) {
			t.Fatalf("Publish: got %v, want ErrNotConnected", err)
		}
	})
	t.Run("after Close", func(t *testing.T) {
		in := start(t, Options{Socket: socket})
		if err := in.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if err := in.Publish(ctx, msg); !errors.Is(err, edge.ErrClosed) {
			t.Fatalf("Publish: got %v, want edge.ErrClosed", err)
		}
		if err := in.Subscribe(ctx, in.rec.deliver); !errors.Is(err, edge.ErrClosed) {
			t.Fatalf("Subscribe: got %v, want edge.ErrClosed", err)
		}
		if err := in.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
	})
	t.Run("too large", func(t *testing.T) {
		a := start(t, Options{Socket: socket, MaxMessageBytes: 1000})
		b := start(t, Options{Socket: socket, MaxMessageBytes: 1000})
		big := edge.Message{Namespace: "/ns", Topic: "t", Data: edge.Text(strings.Repeat("x", 1000))}
		if err := a.Publish(ctx, big); !errors.Is(err, ErrMessageTooLarge) {
			t.Fatalf("Publish: got %v, want ErrMessageTooLarge", err)
		}
		// In a batch, only the large message is left out.
		err := a.PublishBatch(ctx, []edge.Message{big, msg})
		if !errors.Is(err, ErrMessageTooLarge) {
			t.Fatalf("PublishBatch: got %v, want ErrMessageTooLarge", err)
		}
		b.rec.waitFor(t, "the small message of the batch", func() bool { return b.rec.has("x") })
		publish(t, a, "after")
		b.rec.waitFor(t, "a message after the refused one", func() bool { return b.rec.has("after") })
	})
	t.Run("done context", func(t *testing.T) {
		in := start(t, Options{Socket: socket})
		done, cancel := context.WithCancel(ctx)
		cancel()
		if err := in.Publish(done, msg); !errors.Is(err, context.Canceled) {
			t.Fatalf("Publish: got %v, want context.Canceled", err)
		}
	})
}

func TestChannelsShareASocketWithoutMeeting(t *testing.T) {
	socket := socketPath(t)
	red1 := start(t, Options{Socket: socket, Channel: "red"})
	blue := start(t, Options{Socket: socket, Channel: "blue"})
	red2 := start(t, Options{Socket: socket, Channel: "red"})
	publish(t, blue, "blue message")
	publish(t, red1, "red message")
	red2.rec.waitFor(t, "red2 to receive red1's message", func() bool { return red2.rec.has("red message") })
	// Frames from one sender arrive in order: blue's message, published
	// first, would have arrived before red1's.
	if red2.rec.has("blue message") {
		t.Fatal("an instance of channel red received a message of channel blue")
	}
	publish(t, red2, "red reply")
	red1.rec.waitFor(t, "red1 to receive red2's message", func() bool { return red1.rec.has("red reply") })
	if n := blue.rec.count(); n != 0 {
		t.Fatalf("blue received %d messages of channel red: %q", n, blue.rec.texts())
	}
}

func TestFailoverAfterClose(t *testing.T) {
	socket := socketPath(t)
	a := start(t, Options{Socket: socket})
	b := start(t, Options{Socket: socket})
	c := start(t, Options{Socket: socket})
	if !a.isRelay() {
		t.Fatal("the first instance does not relay")
	}
	if err := a.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	probe(t, b, c)
	probe(t, c, b)
	if b.isRelay() == c.isRelay() {
		t.Fatalf("relay roles after failover: b %v, c %v; want exactly one", b.isRelay(), c.isRelay())
	}
	for _, in := range []instance{b, c} {
		if in.log.Count(edge.StageSubscribe) == 0 {
			t.Error("the outage was not reported at StageSubscribe")
		}
	}
	// A newcomer joins the new relay.
	d := start(t, Options{Socket: socket})
	if d.isRelay() {
		t.Fatal("a newcomer took the relay role from a live relay")
	}
	publish(t, d, "from d")
	b.rec.waitFor(t, "b to receive d's message", func() bool { return b.rec.has("from d") })
	c.rec.waitFor(t, "c to receive d's message", func() bool { return c.rec.has("from d") })
}

func TestRelayServe(t *testing.T) {
	socket := socketPath(t)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	relayErrs := make(chan error, 10)
	relay := &Relay{Socket: socket, OnError: func(err error) {
		select {
		case relayErrs <- err:
		default:
		}
	}}
	served := make(chan error, 1)
	go func() { served <- relay.Serve(ctx) }()

	// Drivers that never relay wait for the supervisor's relay.
	a := start(t, Options{Socket: socket, NoRelay: true})
	b := start(t, Options{Socket: socket, NoRelay: true})
	publish(t, a, "via the relay")
	b.rec.waitFor(t, "b to receive a's message", func() bool { return b.rec.has("via the relay") })

	second := &Relay{Socket: socket}
	if err := second.Serve(ctx); !errors.Is(err, ErrRelayActive) {
		t.Fatalf("second Serve: got %v, want ErrRelayActive", err)
	}

	// A driver that may relay does not take over a live relay.
	c := start(t, Options{Socket: socket})
	if c.isRelay() {
		t.Fatal("a driver took the relay role from a live Relay")
	}

	stop()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("Serve did not return after its context was done")
	}
	// c takes over; a and b, which never relay, reconnect to it.
	probe(t, a, b)
	if !c.isRelay() {
		t.Fatal("the driver that may relay did not take the role over")
	}
	if a.log.Count(edge.StageSubscribe) == 0 {
		t.Error("the outage was not reported at StageSubscribe")
	}
	select {
	case err := <-relayErrs:
		t.Errorf("the relay reported %v", err)
	default:
	}
}

func TestPublishWhileDisconnected(t *testing.T) {
	socket := socketPath(t)
	ctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- (&Relay{Socket: socket}).Serve(ctx) }()
	a := start(t, Options{Socket: socket, NoRelay: true})
	stop()
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	a.log.Await(t, edge.StageSubscribe, 0, waitTimeout)
	err := a.Publish(context.Background(), edge.Message{Namespace: "/ns", Topic: "t", Data: edge.Text("lost")})
	if !errors.Is(err, ErrNotConnected) {
		t.Fatalf("Publish: got %v, want ErrNotConnected", err)
	}
	if _, err := os.Stat(socket); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the relay left its socket behind: %v", err)
	}
}

func TestStaleSocket(t *testing.T) {
	socket := socketPath(t)
	// A dead relay leaves its socket file.
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: socket, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()

	a := start(t, Options{Socket: socket})
	b := start(t, Options{Socket: socket})
	if !a.isRelay() {
		t.Fatal("the first instance does not relay over a stale socket")
	}
	publish(t, a, "hello")
	b.rec.waitFor(t, "b to receive a's message", func() bool { return b.rec.has("hello") })

	t.Run("not a socket", func(t *testing.T) {
		path := socketPath(t)
		if err := os.WriteFile(path, []byte("data"), 0o600); err != nil {
			t.Fatal(err)
		}
		err := (&Relay{Socket: path}).Serve(context.Background())
		if err == nil || !strings.Contains(err.Error(), "is not a socket") {
			t.Fatalf("Serve: got %v, want an error saying the path is not a socket", err)
		}
		if data, _ := os.ReadFile(path); string(data) != "data" {
			t.Fatal("the relay changed a file that is not a socket")
		}
	})
}

// dialRaw connects to the relay at socket as a bare client and reads its
// greeting.
func dialRaw(t *testing.T, socket string) net.Conn {
	t.Helper()
	conn, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetReadDeadline(time.Now().Add(waitTimeout))
	hello := make([]byte, len(greeting))
	if _, err := io.ReadFull(conn, hello); err != nil || string(hello) != greeting {
		t.Fatalf("greeting: %q, %v", hello, err)
	}
	return conn
}

// waitDisconnected reads conn until the relay closes it.
func waitDisconnected(t *testing.T, conn net.Conn) int64 {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(waitTimeout))
	n, err := io.Copy(io.Discard, conn)
	if err != nil && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "connection reset") {
		t.Fatalf("the relay did not disconnect the client: %v", err)
	}
	return n
}

func TestStuckClientDoesNotStallTheOthers(t *testing.T) {
	socket := socketPath(t)
	const queue = 256 << 10
	opts := Options{Socket: socket, MaxMessageBytes: 16 << 10, MaxQueueBytes: queue}
	a := start(t, opts)
	b := start(t, opts)
	stuck := dialRaw(t, socket) // and never reads again

	// 4 MiB: far more than the stuck client's queue and socket buffers.
	const rounds, perRound = 80, 50
	body := strings.Repeat("x", 1000)
	batch := make([]edge.Message, perRound)
	for r := range rounds {
		for i := range batch {
			batch[i] = edge.Message{Namespace: "/ns", Topic: "t", Data: edge.Text(fmt.Sprint(r*perRound+i, body))}
		}
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		if err := a.PublishBatch(ctx, batch); err != nil {
			t.Fatalf("round %d: PublishBatch: %v", r, err)
		}
		cancel()
		want := (r + 1) * perRound
		b.rec.waitFor(t, fmt.Sprintf("b to receive %d messages", want), func() bool { return b.rec.count() >= want })
	}
	if n := b.rec.count(); n != rounds*perRound {
		t.Fatalf("b received %d messages, want %d", n, rounds*perRound)
	}
	if n := waitDisconnected(t, stuck); n >= rounds*perRound*1000 {
		t.Fatalf("the stuck client could read %d bytes: it was never disconnected", n)
	}
	if b.log.Count(edge.StageSubscribe) > 0 {
		t.Fatalf("b lost its connection: %v", b.log)
	}
}

// header returns the header of a frame of n bytes.
func header(n int) []byte { return binary.BigEndian.AppendUint32(nil, uint32(n)) }

func TestGarbageIsDropped(t *testing.T) {
	socket := socketPath(t)
	a := start(t, Options{Socket: socket, Channel: "c"})
	b := start(t, Options{Socket: socket, Channel: "c"})

	t.Run("not frames", func(t *testing.T) {
		raw := dialRaw(t, socket)
		if _, err := raw.Write([]byte("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
		waitDisconnected(t, raw)
	})
	t.Run("empty frame", func(t *testing.T) {
		raw := dialRaw(t, socket)
		if _, err := raw.Write(header(0)); err != nil {
			t.Fatal(err)
		}
		waitDisconnected(t, raw)
	})
	t.Run("frame too large", func(t *testing.T) {
		raw := dialRaw(t, socket)
		if _, err := raw.Write(header(DefaultMaxMessageBytes + 1)); err != nil {
			t.Fatal(err)
		}
		waitDisconnected(t, raw)
	})
	t.Run("malformed envelope", func(t *testing.T) {
		raw := dialRaw(t, socket)
		for _, payload := range []string{"\x01c{not json", "\x09c"} {
			if _, err := raw.Write(append(header(len(payload)), payload...)); err != nil {
				t.Fatal(err)
			}
		}
		b.log.Await(t, edge.StageDelivery, 1, waitTimeout)
		errs := b.log.Errors(edge.StageDelivery)
		if len(errs) != 2 {
			t.Errorf("reported at StageDelivery: %v, want the two malformed frames", errs)
		}
		for _, err := range errs {
			if !errors.Is(err, envelope.ErrMalformed) {
				t.Errorf("reported at StageDelivery: %v, want an error wrapping envelope.ErrMalformed", err)
			}
		}
	})

	publish(t, a, "still relaying")
	b.rec.waitFor(t, "b to receive a's message", func() bool { return b.rec.has("still relaying") })
	if n := b.rec.count(); n != 1 {
		t.Fatalf("b received %d messages, want 1: %q", n, b.rec.texts())
	}
	if b.log.Count(edge.StageSubscribe) > 0 {
		t.Fatalf("b lost its connection: %v", b.log)
	}
}

func TestRoleIsReleasedOnClose(t *testing.T) {
	socket := socketPath(t)
	a := start(t, Options{Socket: socket})
	if !a.isRelay() {
		t.Fatal("a lone instance does not relay")
	}
	if err := a.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := os.Stat(socket); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Close left the socket behind: %v", err)
	}
	b := start(t, Options{Socket: socket})
	if !b.isRelay() {
		t.Fatal("the lock was not released: the next instance does not relay")
	}
}

// TestLongStreamArrivesIntact streams bursts of frames through the relay, so
// that its reads gather many frames at once and its writes drain queues of
// many chunks, and checks that every message arrives whole and in order.
func TestLongStreamArrivesIntact(t *testing.T) {
	socket := socketPath(t)
	a := start(t, Options{Socket: socket})
	b := start(t, Options{Socket: socket})
	const rounds, perRound = 100, 200
	batch := make([]edge.Message, perRound)
	for r := range rounds {
		for i := range batch {
			batch[i] = edge.Message{Namespace: "/ns", Topic: "t", Data: edge.Text(fmt.Sprintf("%d-%s", r*perRound+i, strings.Repeat("x", i%150)))}
		}
		if err := a.PublishBatch(context.Background(), batch); err != nil {
			t.Fatalf("round %d: PublishBatch: %v", r, err)
		}
		if r%10 == 9 {
			// Keep what is in flight far below the relay's queue limit.
			want := (r - 4) * perRound
			b.rec.waitFor(t, fmt.Sprintf("%d messages", want), func() bool { return b.rec.count() >= want })
		}
	}
	b.rec.waitFor(t, "every message", func() bool { return b.rec.count() >= rounds*perRound })
	for i, text := range b.rec.texts() {
		if want := fmt.Sprintf("%d-%s", i, strings.Repeat("x", i%perRound%150)); text != want {
			t.Fatalf("message %d is %q, want %q", i, text, want)
		}
	}
	if b.log.Count(testenv.AnyStage) > 0 {
		t.Errorf("b reported: %v", b.log)
	}
}

// TestLargeMessages sends messages larger than the read buffers, near the
// frame limit, through the relay.
func TestLargeMessages(t *testing.T) {
	socket := socketPath(t)
	a := start(t, Options{Socket: socket})
	b := start(t, Options{Socket: socket})
	text := strings.Repeat("large text ", 90_000) // 990 kB
	bin := make([]byte, 700_000)                  // 933 kB in base64
	for i := range bin {
		bin[i] = byte(i * 7)
	}
	msgs := []edge.Message{
		{Namespace: "/ns", Topic: "t", Data: edge.Text(text)},
		{Namespace: "/ns", Topic: "t", Data: edge.Binary(bin)},
		{Namespace: "/ns", Topic: "t", Data: edge.Text("small")},
	}
	if err := a.PublishBatch(context.Background(), msgs); err != nil {
		t.Fatalf("PublishBatch: %v", err)
	}
	b.rec.waitFor(t, "three messages", func() bool { return b.rec.count() >= 3 })
	b.rec.mu.Lock()
	defer b.rec.mu.Unlock()
	for i, got := range b.rec.msgs {
		if want := msgs[i]; got.Data.Binary != want.Data.Binary || string(got.Data.Bytes) != string(want.Data.Bytes) {
			t.Errorf("message %d: got %d bytes (binary %v), want %d bytes (binary %v)", i, len(got.Data.Bytes), got.Data.Binary, len(want.Data.Bytes), want.Data.Binary)
		}
	}
}

// TestReceiverLimit checks that an instance skips a frame larger than its own
// MaxMessageBytes, which a relay with a larger limit forwarded, and reads on.
func TestReceiverLimit(t *testing.T) {
	socket := socketPath(t)
	a := start(t, Options{Socket: socket})
	b := start(t, Options{Socket: socket, MaxMessageBytes: 1000})
	publish(t, a, strings.Repeat("x", 5000))
	publish(t, a, "small")
	b.rec.waitFor(t, "the small message", func() bool { return b.rec.has("small") })
	if n := b.rec.count(); n != 1 {
		t.Fatalf("b received %d messages, want 1", n)
	}
	if !slices.ContainsFunc(b.log.Errors(edge.StageDelivery), func(err error) bool { return errors.Is(err, ErrMessageTooLarge) }) {
		t.Fatal("the large frame was not reported at StageDelivery")
	}
}

// TestPublishOnlyNeverRelays runs a driver that is never subscribed, as a
// publish-only Hub's: it connects as a client from Publish, never takes the
// relay role, drains what the relay forwards to it, and connects again to
// the next relay after a failover.
func TestPublishOnlyNeverRelays(t *testing.T) {
	socket := socketPath(t)
	p := build(t, Options{Socket: socket})
	err := p.Publish(context.Background(), edge.Message{Namespace: "/ns", Topic: "t", Data: edge.Text("nobody")})
	if !errors.Is(err, ErrNotConnected) {
		t.Fatalf("Publish with no relay: got %v, want ErrNotConnected", err)
	}
	if p.isRelay() {
		t.Fatal("a driver that is never subscribed took the relay role")
	}
	if _, err := os.Stat(socket); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a driver that is never subscribed made the socket: %v", err)
	}

	a := start(t, Options{Socket: socket})
	b := start(t, Options{Socket: socket})
	if !a.isRelay() {
		t.Fatal("the first subscribed instance does not relay")
	}
	probe(t, p, b)

	// The relay forwards what a publishes to p too, more than the kernel
	// and the relay's queue (DefaultMaxQueueBytes) hold: p must read it,
	// or be disconnected as too slow. b receives each message before the
	// next is sent, so that b never falls behind.
	body := strings.Repeat("x", 1_000_000)
	for i := range DefaultMaxQueueBytes/len(body) + 4 {
		text := fmt.Sprint("burst-", i, "-", body)
		publish(t, a, text)
		b.rec.waitFor(t, fmt.Sprint("b to receive message ", i), func() bool { return b.rec.has(text) })
	}
	p.mu.Lock()
	conn := p.conn
	p.mu.Unlock()
	publish(t, p, "after the burst")
	a.rec.waitFor(t, "a to receive p's message after the burst", func() bool { return a.rec.has("after the burst") })
	p.mu.Lock()
	same := p.conn == conn
	p.mu.Unlock()
	if !same {
		t.Error("p was disconnected during the burst")
	}

	// Failover: p reaches the new relay.
	if err := a.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	probe(t, p, b)
	if !b.isRelay() || p.isRelay() {
		t.Fatalf("relay roles after failover: b %v, p %v; want b only", b.isRelay(), p.isRelay())
	}
	if n := p.log.Count(testenv.AnyStage); n != 0 {
		t.Errorf("p reported %d errors: %v", n, p.log)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := p.Publish(context.Background(), edge.Message{Namespace: "/ns", Topic: "t", Data: edge.Text("closed")}); !errors.Is(err, edge.ErrClosed) {
		t.Fatalf("Publish after Close: got %v, want edge.ErrClosed", err)
	}
}

// TestSubscribeAfterPublish subscribes a driver that has published, and so
// connected, already: the subscription takes over from the connection that
// Publish made.
func TestSubscribeAfterPublish(t *testing.T) {
	socket := socketPath(t)
	a := start(t, Options{Socket: socket})
	p := build(t, Options{Socket: socket})
	probe(t, p, a)
	if err := p.Subscribe(context.Background(), p.rec.deliver); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	probe(t, a, p)
	probe(t, p, a)
	if p.isRelay() {
		t.Fatal("p took the relay role from a live relay")
	}
}
