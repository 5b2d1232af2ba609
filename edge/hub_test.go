package edge_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/internal/testenv"
)

// wait bounds every wait in these tests; nothing sleeps.
const wait = 10 * time.Second

// inbox is an Endpoint that records what it is given.
type inbox struct {
	got    chan edge.Data
	closed chan int // the close status
	panics bool
}

func newInbox() *inbox {
	return &inbox{got: make(chan edge.Data, 1024), closed: make(chan int, 1)}
}

func (b *inbox) Deliver(d edge.Data) {
	if b.panics {
		panic("endpoint bug")
	}
	b.got <- d
}

// Close records the first close status; closing again is a no-op, as
// for a real connection.
func (b *inbox) Close(code int, reason string) error {
	select {
	case b.closed <- code:
	default:
	}
	return nil
}

func (b *inbox) next(t *testing.T) edge.Data {
	t.Helper()
	return testenv.Recv(t, b.got, wait, "a delivery")
}

// empty asserts that nothing is waiting in the inbox. Local delivery is
// synchronous, so after Publish returns there is nothing more to wait for.
func (b *inbox) empty(t *testing.T) {
	t.Helper()
	select {
	case d := <-b.got:
		t.Fatalf("unexpected delivery %q", d.Bytes)
	default:
	}
}

func newHub(t *testing.T, opts edge.Options) *edge.Hub {
	t.Helper()
	h, err := edge.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func join(t *testing.T, h *edge.Hub, ns string, topics ...string) (*edge.Member, *inbox) {
	t.Helper()
	b := newInbox()
	m, err := h.Join(edge.NewID(), ns, b)
	if err != nil {
		t.Fatal(err)
	}
	for _, topic := range topics {
		if err := m.Subscribe(topic); err != nil {
			t.Fatal(err)
		}
	}
	return m, b
}

func TestPeerPublishSkipsSenderAndOtherNamespaces(t *testing.T) {
	h := newHub(t, edge.Options{})
	alice, aliceIn := join(t, h, "/room", "chat")
	_, bobIn := join(t, h, "/room", "chat")
	_, carolIn := join(t, h, "/other", "chat")
	_, daveIn := join(t, h, "/room", "news")

	if err := alice.Publish(context.Background(), "chat", edge.Text("hi")); err != nil {
		t.Fatal(err)
	}
	if d := bobIn.next(t); d.String() != "hi" || d.Binary {
		t.Fatalf("bob got %q binary=%v", d.Bytes, d.Binary)
	}
	bobIn.empty(t)
	aliceIn.empty(t)
	carolIn.empty(t)
	daveIn.empty(t)
}

func TestHubPublishEmptyNamespaceReachesEveryNamespace(t *testing.T) {
	h := newHub(t, edge.Options{})
	_, a := join(t, h, "/a", "news")
	_, b := join(t, h, "/b", "news")
	_, c := join(t, h, "/b", "other")

	if err := h.Publish(context.Background(), edge.Message{Topic: "news", Data: edge.Binary([]byte{0, 255})}); err != nil {
		t.Fatal(err)
	}
	for _, in := range []*inbox{a, b} {
		if d := in.next(t); !d.Binary || string(d.Bytes) != "\x00\xff" {
			t.Fatalf("got %q binary=%v", d.Bytes, d.Binary)
		}
	}
	c.empty(t)

	if err := h.Publish(context.Background(), edge.Message{Namespace: "/a", Topic: "news", Data: edge.Text("only a")}); err != nil {
		t.Fatal(err)
	}
	if d := a.next(t); d.String() != "only a" {
		t.Fatalf("a got %q", d.Bytes)
	}
	b.empty(t)
}

func TestSubscriptions(t *testing.T) {
	h := newHub(t, edge.Options{})
	m, in := join(t, h, "/ns", "b", "a", "a")
	if got := fmt.Sprint(m.Topics()); got != "[a b]" {
		t.Fatalf("topics %s", got)
	}
	if err := m.Unsubscribe("a"); err != nil {
		t.Fatal(err)
	}
	if err := m.Unsubscribe("never"); err != nil {
		t.Fatal(err)
	}
	h.Publish(context.Background(), edge.Message{Namespace: "/ns", Topic: "a", Data: edge.Text("x")})
	in.empty(t)
	if err := m.Subscribe(""); !errors.Is(err, edge.ErrInvalidTopic) {
		t.Fatalf("empty topic: %v", err)
	}
	if st := h.Stats(); st.Peers != 1 {
		t.Fatalf("peers %d", st.Peers)
	}

	m.Leave()
	m.Leave()
	h.Publish(context.Background(), edge.Message{Namespace: "/ns", Topic: "b", Data: edge.Text("x")})
	in.empty(t)
	if err := m.Subscribe("c"); !errors.Is(err, edge.ErrClosed) {
		t.Fatalf("subscribe after leave: %v", err)
	}
	if st := h.Stats(); st.Peers != 0 {
		t.Fatalf("peers %d after leave", st.Peers)
	}
}

func TestInvalidInput(t *testing.T) {
	h := newHub(t, edge.Options{})
	if err := h.Publish(context.Background(), edge.Message{Namespace: "/x"}); !errors.Is(err, edge.ErrInvalidTopic) {
		t.Fatalf("empty topic: %v", err)
	}
	if _, err := h.Join("", "/x", newInbox()); err == nil {
		t.Fatal("join without id")
	}
	if _, err := h.Join("id", "", newInbox()); err == nil {
		t.Fatal("join without namespace")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := h.Publish(ctx, edge.Message{Topic: "t"}); !errors.Is(err, context.Canceled) {
		t.Fatalf("publish with a done context: %v", err)
	}
}

func TestCloseClosesPeersThenDriver(t *testing.T) {
	d := newFakeDriver()
	h := newHub(t, edge.Options{Sync: d.sync})
	m, in := join(t, h, "/ns", "t")
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if code := <-in.closed; code != edge.StatusGoingAway {
		t.Fatalf("close code %d", code)
	}
	if !d.isClosed() {
		t.Fatal("driver not closed")
	}
	if err := h.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if err := h.Publish(context.Background(), edge.Message{Topic: "t"}); !errors.Is(err, edge.ErrClosed) {
		t.Fatalf("publish after close: %v", err)
	}
	if err := m.Publish(context.Background(), "t", edge.Text("x")); !errors.Is(err, edge.ErrClosed) {
		t.Fatalf("peer publish after close: %v", err)
	}
	if _, err := h.Join(edge.NewID(), "/ns", newInbox()); !errors.Is(err, edge.ErrClosed) {
		t.Fatalf("join after close: %v", err)
	}
	if err := h.Flush(context.Background()); err != nil && !errors.Is(err, edge.ErrClosed) {
		t.Fatalf("flush after close: %v", err)
	}
}

func TestSyncErrors(t *testing.T) {
	boom := errors.New("no channel name")
	if _, err := edge.New(edge.Options{Sync: func(edge.Instance) (edge.Driver, error) { return nil, boom }}); !errors.Is(err, boom) {
		t.Fatalf("sync error: %v", err)
	}
	if _, err := edge.New(edge.Options{Sync: func(edge.Instance) (edge.Driver, error) { return nil, nil }}); err == nil {
		t.Fatal("nil driver accepted")
	}
	var pe *edge.PanicError
	if _, err := edge.New(edge.Options{Sync: func(edge.Instance) (edge.Driver, error) { panic("bad sync") }}); !errors.As(err, &pe) {
		t.Fatalf("panicking sync: %v", err)
	}
}

func TestFailingDriverReportsEveryStageAndLocalDeliveryGoesOn(t *testing.T) {
	d := newFakeDriver()
	d.subscribeErr = errors.New("backplane unreachable")
	d.publishErr = errors.New("backplane write failed")
	log := testenv.NewErrorLog()
	h := newHub(t, edge.Options{Sync: d.sync, OnError: log.OnError})

	if err := log.Await(t, edge.StageSubscribe, 0, wait); !errors.Is(err, d.subscribeErr) {
		t.Fatalf("subscribe: %v", err)
	}

	alice, _ := join(t, h, "/ns", "t")
	_, bobIn := join(t, h, "/ns", "t")
	if err := alice.Publish(context.Background(), "t", edge.Text("local")); err != nil {
		t.Fatalf("publish must not fail with the backplane: %v", err)
	}
	if d := bobIn.next(t); d.String() != "local" {
		t.Fatalf("bob got %q", d.Bytes)
	}
	if err := log.Await(t, edge.StagePublish, 0, wait); !errors.Is(err, d.publishErr) {
		t.Fatalf("publish: %v", err)
	}

	d.deliver(edge.Message{Namespace: "/ns", Topic: ""}) // what a broken driver might hand over
	if err := log.Await(t, edge.StageDelivery, 0, wait); !errors.Is(err, edge.ErrInvalidTopic) {
		t.Fatalf("delivery: %v", err)
	}
	d.deliver(edge.Message{Namespace: "/ns", Topic: "t", Data: edge.Text("relayed")})
	if d := bobIn.next(t); d.String() != "relayed" {
		t.Fatalf("bob got %q", d.Bytes)
	}
}

func TestInboundIsDeliveredLocallyAndNeverRelayed(t *testing.T) {
	d := newFakeDriver()
	gw := &fakeGateway{}
	h := newHub(t, edge.Options{Sync: d.sync, Gateway: gw})
	_, a := join(t, h, "/a", "t")
	_, b := join(t, h, "/b", "t")

	d.deliver(edge.Message{Namespace: "", Topic: "t", Data: edge.Text("all")})
	a.next(t)
	b.next(t)
	if err := h.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := len(d.published()); n != 0 {
		t.Fatalf("inbound message relayed %d times", n)
	}
	if n := len(gw.delivered()); n != 0 {
		t.Fatalf("inbound message handed to the gateway %d times", n)
	}
	if st := h.Stats(); st.Received != 1 {
		t.Fatalf("received %d", st.Received)
	}
}

func TestPublishRelaysAndHandsToGatewayWithSender(t *testing.T) {
	d := newFakeDriver()
	gw := &fakeGateway{}
	h := newHub(t, edge.Options{Sync: d.sync, Gateway: gw})
	alice, _ := join(t, h, "/ns", "t")

	alice.Publish(context.Background(), "t", edge.Text("from alice"))
	h.Publish(context.Background(), edge.Message{Topic: "t", Data: edge.Text("from server")})
	if err := h.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := d.published()
	if len(got) != 2 || got[0].Data.String() != "from alice" || got[0].Namespace != "/ns" || got[1].Namespace != "" {
		t.Fatalf("relayed %+v", got)
	}
	calls := gw.delivered()
	if len(calls) != 2 {
		t.Fatalf("gateway calls %+v", calls)
	}
	for _, c := range calls {
		want := ""
		if c.msg.Data.String() == "from alice" {
			want = alice.ID()
		}
		if c.except != want {
			t.Fatalf("gateway except %q for %q, want %q", c.except, c.msg.Data.Bytes, want)
		}
	}
	if st := h.Stats(); st.Published != 2 || st.Relayed != 2 {
		t.Fatalf("stats %+v", st)
	}
}

func TestFullQueueDropsAndReportsWithoutBlocking(t *testing.T) {
	d := newFakeDriver()
	d.block = make(chan struct{})
	log := testenv.NewErrorLog()
	h := newHub(t, edge.Options{Sync: d.sync, OnError: log.OnError, QueueSize: 2})

	for i := range 10 { // one in the driver, two queued, the rest dropped
		if err := h.Publish(context.Background(), edge.Message{Topic: "t", Data: edge.Text(fmt.Sprint(i))}); err != nil {
			t.Fatal(err)
		}
	}
	if err := log.Await(t, edge.StagePublish, 0, wait); !errors.Is(err, edge.ErrQueueFull) {
		t.Fatalf("drop: %v", err)
	}
	close(d.block)
	if err := h.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	st := h.Stats()
	if st.Dropped == 0 || st.Relayed+st.Dropped != 10 {
		t.Fatalf("stats %+v", st)
	}
}

func TestQueuedMessagesGoOutInOneBatch(t *testing.T) {
	d := newFakeDriver()
	d.block = make(chan struct{})
	h := newHub(t, edge.Options{Sync: d.sync})
	h.Publish(context.Background(), edge.Message{Topic: "t", Data: edge.Text("first")})
	<-d.entered // the relay is inside Publish with the first message
	for i := range 5 {
		h.Publish(context.Background(), edge.Message{Topic: "t", Data: edge.Text(fmt.Sprint(i))})
	}
	close(d.block)
	if err := h.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := d.batchSizes(); fmt.Sprint(got) != "[1 5]" {
		t.Fatalf("batches %v", got)
	}
}

func TestFlushWaitsForTheRelay(t *testing.T) {
	d := newFakeDriver()
	d.block = make(chan struct{})
	h := newHub(t, edge.Options{Sync: d.sync})
	h.Publish(context.Background(), edge.Message{Topic: "t", Data: edge.Text("x")})

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := h.Flush(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("flush with the relay blocked: %v", err)
	}
	close(d.block)
	if err := h.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := len(d.published()); n != 1 {
		t.Fatalf("published %d", n)
	}
}

func TestPanicsAreIsolated(t *testing.T) {
	d := newFakeDriver()
	d.publishPanics = true
	var reported atomic.Int32
	log := testenv.NewErrorLog()
	h := newHub(t, edge.Options{Sync: d.sync, OnError: func(err error, info edge.ErrorInfo) {
		reported.Add(1)
		log.OnError(err, info)
		panic("OnError bug") // must not escape either
	}})
	bad, badIn := join(t, h, "/ns", "t")
	_ = bad
	badIn.panics = true
	_, good := join(t, h, "/ns", "t")

	h.Publish(context.Background(), edge.Message{Namespace: "/ns", Topic: "t", Data: edge.Text("x")})
	if d := good.next(t); d.String() != "x" {
		t.Fatalf("good got %q", d.Bytes)
	}
	var pe *edge.PanicError
	if err := log.Await(t, edge.StageDelivery, 0, wait); !errors.As(err, &pe) {
		t.Fatalf("endpoint panic: %v", err)
	}
	select {
	case code := <-badIn.closed:
		if code != edge.StatusInternalError {
			t.Fatalf("close code %d", code)
		}
	case <-time.After(wait):
		t.Fatal("panicking peer not closed")
	}
	if err := log.Await(t, edge.StagePublish, 0, wait); !errors.As(err, &pe) {
		t.Fatalf("driver panic: %v", err)
	}
	// The hub still works.
	h.Publish(context.Background(), edge.Message{Namespace: "/ns", Topic: "t", Data: edge.Text("y")})
	if d := good.next(t); d.String() != "y" {
		t.Fatalf("good got %q", d.Bytes)
	}
}

func TestNewID(t *testing.T) {
	seen := make(map[string]bool)
	for range 1000 {
		id := edge.NewID()
		if len(id) != 36 || id[14] != '4' || seen[id] {
			t.Fatalf("bad id %q", id)
		}
		seen[id] = true
	}
}

func TestPanickingEndpointLeavesOnce(t *testing.T) {
	log := testenv.NewErrorLog()
	var h *edge.Hub
	h = newHub(t, edge.Options{OnError: func(err error, info edge.ErrorInfo) {
		h.Stats() // calling back into the hub from OnError is fine
		log.OnError(err, info)
	}})
	bad, badIn := join(t, h, "/ns", "t")
	badIn.panics = true
	_, good := join(t, h, "/ns", "t")

	for i := range 100 {
		h.Publish(context.Background(), edge.Message{Namespace: "/ns", Topic: "t", Data: edge.Text(fmt.Sprint(i))})
		good.next(t)
		// Subscribing meanwhile takes the hub's write lock while a report
		// may be in flight.
		if _, err := h.Join(edge.NewID(), "/ns", newInbox()); err != nil {
			t.Fatal(err)
		}
	}
	if code := <-badIn.closed; code != edge.StatusInternalError {
		t.Fatalf("close code %d", code)
	}
	log.Await(t, edge.StageDelivery, 0, wait)
	if err := bad.Subscribe("t"); !errors.Is(err, edge.ErrClosed) {
		t.Fatalf("the broken member is still joined: %v", err)
	}
	if n := log.Count(edge.StageDelivery); n != 1 {
		t.Fatalf("%d reports for one broken endpoint", n)
	}
}

func TestInvalidTextIsRefused(t *testing.T) {
	h := newHub(t, edge.Options{})
	m, _ := join(t, h, "/ns", "t")
	bad := edge.Data{Bytes: []byte{0xff, 0xfe}}
	if err := h.Publish(context.Background(), edge.Message{Topic: "t", Data: bad}); !errors.Is(err, edge.ErrInvalidText) {
		t.Fatalf("hub publish: %v", err)
	}
	if err := m.Publish(context.Background(), "t", bad); !errors.Is(err, edge.ErrInvalidText) {
		t.Fatalf("peer publish: %v", err)
	}
	bad.Binary = true // any bytes are fine in binary
	if err := m.Publish(context.Background(), "t", bad); err != nil {
		t.Fatal(err)
	}
}

// plainDriver hides fakeDriver's PublishBatch: the hub relays one by one.
type plainDriver struct{ d *fakeDriver }

func (p plainDriver) Publish(ctx context.Context, msg edge.Message) error {
	return p.d.Publish(ctx, msg)
}
func (p plainDriver) Subscribe(ctx context.Context, deliver func(edge.Message)) error {
	return p.d.Subscribe(ctx, deliver)
}
func (p plainDriver) Close() error { return p.d.Close() }

func TestEveryRelayFailureIsReported(t *testing.T) {
	d := newFakeDriver()
	d.block = make(chan struct{})
	d.publishErr = errors.New("backplane write failed")
	log := testenv.NewErrorLog()
	h := newHub(t, edge.Options{
		Sync:    func(edge.Instance) (edge.Driver, error) { return plainDriver{d}, nil },
		OnError: log.OnError,
	})
	h.Publish(context.Background(), edge.Message{Topic: "t", Data: edge.Text("first")})
	<-d.entered
	for i := range 3 { // queued behind the first: relayed one by one
		h.Publish(context.Background(), edge.Message{Topic: "t", Data: edge.Text(fmt.Sprint(i))})
	}
	close(d.block)
	if err := h.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := log.Count(edge.StagePublish); n != 4 {
		t.Fatalf("%d failures reported, want 4", n)
	}
	if st := h.Stats(); st.Relayed != 0 {
		t.Fatalf("relayed %d", st.Relayed)
	}
}

func TestCloseDuringARelayReportsNothing(t *testing.T) {
	d := newFakeDriver()
	d.block = make(chan struct{}) // never closed: Publish waits for its ctx
	d.honourCtx = true
	log := testenv.NewErrorLog()
	h, err := edge.New(edge.Options{Sync: d.sync, OnError: log.OnError})
	if err != nil {
		t.Fatal(err)
	}
	h.Publish(context.Background(), edge.Message{Topic: "t", Data: edge.Text("x")})
	<-d.entered
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if n := log.Count(edge.StagePublish); n != 0 {
		t.Fatalf("close reported %d publish errors", n)
	}
}

func TestCloseWaitsForAPanickingEndpointToBeClosed(t *testing.T) {
	log := testenv.NewErrorLog()
	h, err := edge.New(edge.Options{OnError: log.OnError})
	if err != nil {
		t.Fatal(err)
	}
	_, in := join(t, h, "/ns", "t")
	in.panics = true
	h.Publish(context.Background(), edge.Message{Namespace: "/ns", Topic: "t", Data: edge.Text("x")})
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-in.closed:
		if code != edge.StatusInternalError {
			t.Fatalf("close code %d", code)
		}
	default:
		t.Fatal("Close returned before the panicking endpoint was closed")
	}
	if n := log.Count(edge.StageDelivery); n != 1 {
		t.Fatalf("%d reports", n)
	}
	if err := h.Flush(context.Background()); err != nil {
		t.Fatalf("flush after close with nothing pending: %v", err)
	}
}

func TestPublishOnlyHubRelaysWithoutSubscribing(t *testing.T) {
	d := newFakeDriver()
	d.subscribeErr = errors.New("must not be called")
	log := testenv.NewErrorLog()
	h := newHub(t, edge.Options{Sync: d.sync, PublishOnly: true, OnError: log.OnError})
	if err := h.Publish(context.Background(), edge.Message{Namespace: "/ns", Topic: "t", Data: edge.Text("out")}); err != nil {
		t.Fatal(err)
	}
	if err := h.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := d.published(); len(got) != 1 || got[0].Data.String() != "out" {
		t.Fatalf("relayed %+v", got)
	}
	d.mu.Lock()
	subscribed := d.deliver != nil
	d.mu.Unlock()
	if subscribed || log.Count(edge.StageSubscribe) != 0 {
		t.Fatalf("a publish-only hub subscribed its driver (errors: %v)", log)
	}
}

func TestPublishFromSkipsThePeerWhereverItIsHeld(t *testing.T) {
	gw := &fakeGateway{}
	h := newHub(t, edge.Options{Gateway: gw})
	alice, aliceIn := join(t, h, "/ns", "t")
	_, bobIn := join(t, h, "/ns", "t")

	// A peer held by the Gateway publishes: every local subscriber gets it,
	// and the Gateway is told whom to skip.
	msg := edge.Message{Namespace: "/ns", Topic: "t", Data: edge.Text("from the gateway")}
	if err := h.PublishFrom(context.Background(), msg, "gw-conn-1"); err != nil {
		t.Fatal(err)
	}
	aliceIn.next(t)
	bobIn.next(t)

	// On behalf of a local member, by its id: it is skipped like Member.Publish.
	msg.Data = edge.Text("as alice")
	if err := h.PublishFrom(context.Background(), msg, alice.ID()); err != nil {
		t.Fatal(err)
	}
	if d := bobIn.next(t); d.String() != "as alice" {
		t.Fatalf("bob got %q", d.Bytes)
	}
	aliceIn.empty(t)
	if err := h.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The Gateway's workers run at once: its calls come in any order.
	excepts := map[string]string{}
	for _, c := range gw.delivered() {
		excepts[c.msg.Data.String()] = c.except
	}
	if len(excepts) != 2 || excepts["from the gateway"] != "gw-conn-1" || excepts["as alice"] != alice.ID() {
		t.Fatalf("gateway calls skip %v", excepts)
	}
}

// deadlineGateway records how long each Deliver was given.
type deadlineGateway chan time.Duration

func (g deadlineGateway) Deliver(ctx context.Context, msg edge.Message, except string) error {
	dl, _ := ctx.Deadline()
	g <- time.Until(dl)
	return nil
}

func TestGatewayHasATimeBudgetOfItsOwn(t *testing.T) {
	gw := make(deadlineGateway, 1)
	h := newHub(t, edge.Options{Sync: newFakeDriver().sync, Gateway: gw, PublishTimeout: time.Millisecond, GatewayTimeout: time.Hour})
	h.Publish(context.Background(), edge.Message{Topic: "t", Data: edge.Text("x")})
	if left := testenv.Recv(t, gw, wait, "a Gateway.Deliver"); left < time.Hour-time.Minute {
		t.Fatalf("Deliver got %v, want the GatewayTimeout of an hour, not the PublishTimeout", left)
	}
}
