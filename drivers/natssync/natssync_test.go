package natssync_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"

	"github.com/edgesync/edgesync/drivers/drivertest"
	"github.com/edgesync/edgesync/drivers/natssync"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/envelope"
	"github.com/edgesync/edgesync/internal/faultproxy"
	"github.com/edgesync/edgesync/internal/testenv"
)

// waitTimeout bounds every wait of these tests; a test that works never
// meets it.
const waitTimeout = 10 * time.Second

// connect returns a connection to the test server, closed when t ends.
func connect(t testing.TB, opts ...nats.Option) *nats.Conn {
	t.Helper()
	return connectTo(t, testenv.NATSURL(t), opts...)
}

func connectTo(t testing.TB, url string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("nats.Connect(%s): %v", url, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func TestDriverConformance(t *testing.T) {
	nc := connect(t)
	drivertest.RunDriverTests(t, func(tb testing.TB, channel string) edge.Sync {
		return natssync.New(natssync.Options{Conn: nc, Channel: channel})
	})
}

// newHub starts a Hub relaying through NATS, closed when t ends.
func newHub(t *testing.T, sync edge.Sync) (*edge.Hub, *testenv.ErrorLog) {
	t.Helper()
	log := testenv.NewErrorLog()
	hub, err := edge.New(edge.Options{Sync: sync, OnError: log.OnError})
	if err != nil {
		t.Fatalf("edge.New: %v", err)
	}
	t.Cleanup(func() { hub.Close() })
	return hub, log
}

func TestOptionsAreValidated(t *testing.T) {
	nc := connect(t)
	for _, tc := range []struct {
		name string
		opts natssync.Options
		want string
	}{
		{"no connection", natssync.Options{Channel: "c"}, "Conn"},
		{"no channel", natssync.Options{Conn: nc}, "Channel"},
		{"a wildcard", natssync.Options{Conn: nc, Channel: "chat.>"}, "Channel"},
		{"an empty token", natssync.Options{Conn: nc, Channel: "app..chat"}, "Channel"},
		{"white space", natssync.Options{Conn: nc, Channel: "my chat"}, "Channel"},
		{"an empty key", natssync.Options{Conn: nc, Channel: "c", Keys: [][]byte{nil}}, "Keys"},
	} {
		hub, err := edge.New(edge.Options{Sync: natssync.New(tc.opts)})
		if err == nil {
			hub.Close()
			t.Errorf("%s: edge.New returned no error", tc.name)
		} else if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: edge.New: %v, want it to name %s", tc.name, err, tc.want)
		}
	}
}

// hostileNames are namespaces and topics that break naive subjects: NATS
// separators and wildcards, white space, the escapes of the token scheme,
// invalid UTF-8, and names too long for a subject.
func hostileNames(token string) []string {
	parts := []string{
		".", "..", "*", ">", ".>", ".*", "*.>", " ", "\t", "\r\n", "\x00", "\x7f",
		"~", "%", "%2E", "%7E", "_", "-", "/", "/_ws", "$SYS", "_INBOX", "\xff", "\xc3\x28", "ü ✓", "",
	}
	var names []string
	for _, p := range parts {
		names = append(names, token+p, p+token)
	}
	return append(names, "", ".", "*", ">", "~", strings.Repeat(".", 43), token+strings.Repeat("x", 64<<10))
}

// Messages whose namespace and topic hold anything at all arrive with both
// intact, each to its own address, and a member of one never receives the
// messages of another.
func TestHostileNamespacesAndTopics(t *testing.T) {
	t.Parallel()
	nc := connect(t)
	channel := testenv.Channel(t)
	a, aLog := newHub(t, natssync.New(natssync.Options{Conn: nc, Channel: channel}))
	b, bLog := newHub(t, natssync.New(natssync.Options{Conn: connect(t), Channel: channel}))
	token := edge.NewID()[:8]
	names := slices.Compact(slices.Sorted(slices.Values(hostileNames(token))))
	type address struct{ namespace, topic string }
	sinks := map[address]*testenv.Sink{}
	var addrs []address
	for i, topic := range names {
		if topic == "" || !utf8.ValidString(topic) {
			// A member's topic is never empty (drivertest covers an
			// empty namespace), and the envelope carries invalid UTF-8
			// as U+FFFD, as crossws does: those names arrive changed.
			continue
		}
		// Every name as a topic, and as a namespace of a few topics.
		ns := names[(i*7)%len(names)]
		if ns == "" || !utf8.ValidString(ns) {
			ns = "/ns"
		}
		addr := address{ns, topic}
		if sinks[addr] == nil {
			sinks[addr] = testenv.Join(t, b, ns, topic)
			addrs = append(addrs, addr)
		}
	}
	for i, addr := range addrs {
		testenv.Publish(t, a, addr.namespace, addr.topic, "message "+strconv.Itoa(i))
	}
	for i, addr := range addrs {
		s := sinks[addr]
		s.WaitFor(t, fmt.Sprintf("message %d to %s %s", i, short(addr.namespace), short(addr.topic)),
			func() bool { return s.Has("message " + strconv.Itoa(i)) })
	}
	for i, addr := range addrs {
		s := sinks[addr]
		if n := s.Len(); n != 1 {
			t.Errorf("the member of %q %q received %d messages, want its own only (message %d)", short(addr.namespace), short(addr.topic), n, i)
		}
	}
	for _, l := range []*testenv.ErrorLog{aLog, bLog} {
		if errs := l.Errors(testenv.AnyStage); len(errs) > 0 {
			t.Errorf("reported: %v", errs)
		}
	}
}

func short(s string) string {
	if len(s) > 40 {
		return fmt.Sprintf("%q…(%d bytes)", s[:40], len(s))
	}
	return strconv.Quote(s)
}

// The subject names the namespace and the topic, so that a plain NATS
// subscriber (and, later, a routed instance) can take one topic only.
func TestSubjectNamesTheTopic(t *testing.T) {
	t.Parallel()
	nc := connect(t)
	channel := testenv.Channel(t) + ".app"
	hub, _ := newHub(t, natssync.New(natssync.Options{Conn: nc, Channel: channel}))
	raw := connect(t)
	sub, err := raw.SubscribeSync(channel + ".%2Froom.lobby")
	if err != nil {
		t.Fatal(err)
	}
	if err := raw.Flush(); err != nil {
		t.Fatal(err)
	}
	testenv.Publish(t, hub, "/room", "other", "not for the raw subscriber")
	testenv.Publish(t, hub, "/room", "lobby", "for the raw subscriber")
	msg, err := sub.NextMsg(waitTimeout)
	if err != nil {
		t.Fatalf("raw subscriber: %v", err)
	}
	if want := natssync.Subject(channel, "/room", "lobby"); msg.Subject != want {
		t.Errorf("subject %q, want %q", msg.Subject, want)
	}
	id, got, err := envelope.Decode(msg.Data)
	if err != nil || id != hub.ID() || got.Namespace != "/room" || got.Topic != "lobby" || string(got.Data.Bytes) != "for the raw subscriber" {
		t.Errorf("raw subscriber received %q: %v, %v, %v", msg.Data, id, got, err)
	}
}

// Payloads from strangers on the channel's subjects that are not envelopes,
// or are too large, are dropped and reported; a valid one from a stranger is
// delivered, and the relay goes on.
func TestStrangerPayloads(t *testing.T) {
	t.Parallel()
	nc := connect(t)
	channel := testenv.Channel(t)
	const maxBytes = 4096
	a, _ := newHub(t, natssync.New(natssync.Options{Conn: nc, Channel: channel}))
	b, bLog := newHub(t, natssync.New(natssync.Options{Conn: nc, Channel: channel, MaxMessageBytes: maxBytes}))
	got := testenv.Join(t, b, "/ns", "t")

	stranger := edge.NewID()
	foreign, _ := envelope.Encode(stranger, edge.Message{Namespace: "/ns", Topic: "t", Data: edge.Text("from a stranger")})
	huge, _ := envelope.Encode(stranger, edge.Message{Namespace: "/ns", Topic: "t", Data: edge.Text(strings.Repeat("x", maxBytes))})
	malformed := []string{
		"not json",
		"\xff\xfe\x00\x01",
		`{"id":"` + stranger + `","msg":{"namespace":"/ns","topic":"t"}}`,
		`[1,2,3]`,
		"",
	}
	subj := natssync.Subject(channel, "/ns", "t")
	for i, p := range append(slices.Clone(malformed), string(huge), string(foreign)) {
		// Anywhere under the channel: the envelope, not the subject, counts.
		s := subj
		if i%2 == 1 {
			s = channel + ".x"
		}
		if err := nc.Publish(s, []byte(p)); err != nil {
			t.Fatalf("raw publish: %v", err)
		}
	}
	testenv.Publish(t, a, "/ns", "t", "still flowing")
	// One connection, one subscription: everything before it is handled.
	got.WaitText(t, "still flowing")
	if !got.Has("from a stranger") {
		t.Error("the valid envelope of a stranger was not delivered")
	}
	if got.HasPrefix("xxxx") {
		t.Error("the oversized payload was delivered")
	}
	errs := bLog.Errors(edge.StageDelivery)
	var nMalformed, nLarge int
	for _, err := range errs {
		switch {
		case errors.Is(err, envelope.ErrMalformed):
			nMalformed++
		case strings.Contains(err.Error(), "MaxMessageBytes"):
			nLarge++
		}
	}
	if nMalformed != len(malformed) || nLarge != 1 || len(errs) != len(malformed)+1 {
		t.Errorf("reported at StageDelivery: %v; want %d malformed envelopes and 1 oversized payload", errs, len(malformed))
	}
	if errs := bLog.Errors(edge.StageSubscribe); len(errs) > 0 {
		t.Errorf("reported at StageSubscribe: %v", errs)
	}
}

var (
	keyOld   = []byte("old key of the test cluster, 32 bytes or more")
	keyNew   = []byte("new key of the test cluster, 32 bytes or more")
	keyOther = []byte("a key that no instance of the cluster accepts")
)

// In a signed cluster, hubs exchange messages across a key rotation, and
// envelopes that a stranger publishes, unsigned or signed with another key,
// reach nobody and are reported.
func TestSignedCluster(t *testing.T) {
	t.Parallel()
	nc := connect(t)
	channel := testenv.Channel(t)
	opts := func(keys ...[]byte) edge.Sync {
		return natssync.New(natssync.Options{Conn: nc, Channel: channel, Keys: keys})
	}
	a, aLog := newHub(t, opts(keyOld))
	b, _ := newHub(t, opts(keyOld, keyNew))
	atA, atB := testenv.Join(t, a, "/ns", "t"), testenv.Join(t, b, "/ns", "t")
	testenv.Publish(t, a, "/ns", "t", "from a")
	testenv.Publish(t, b, "/ns", "t", "from b")
	atB.WaitText(t, "from a")
	atA.WaitText(t, "from b")

	stranger := edge.NewID()
	forged := edge.Message{Namespace: "/ns", Topic: "t", Data: edge.Text("forged")}
	plain, _ := envelope.Encode(stranger, forged)
	other, _ := envelope.NewSigner(channel, [][]byte{keyOther})
	wrong, _ := other.Encode(stranger, forged)
	for _, p := range [][]byte{plain, wrong} {
		if err := nc.Publish(natssync.Subject(channel, "/ns", "t"), p); err != nil {
			t.Fatalf("raw publish: %v", err)
		}
	}
	if err := aLog.Await(t, edge.StageDelivery, 1, waitTimeout); !errors.Is(err, envelope.ErrSignature) {
		t.Fatalf("a reported %v; want ErrSignature", err)
	}
	testenv.Publish(t, b, "/ns", "t", "last")
	atA.WaitText(t, "last")
	if atA.Has("forged") || atB.Has("forged") {
		t.Error("a forged envelope was delivered in a signed cluster")
	}
	if n := aLog.CountIs(edge.StageDelivery, envelope.ErrSignature); n != 2 {
		t.Errorf("a reported %d signature errors, want 2: %v", n, aLog)
	}
}

// The user's connection stays open, and its handlers stay the user's, after
// the Hub closes.
func TestUserConnectionIsLeftAlone(t *testing.T) {
	t.Parallel()
	reconnected := make(chan struct{}, 1)
	nc := connect(t, nats.ReconnectHandler(func(*nats.Conn) { reconnected <- struct{}{} }))
	hub, err := edge.New(edge.Options{Sync: natssync.New(natssync.Options{Conn: nc, Channel: testenv.Channel(t)})})
	if err != nil {
		t.Fatal(err)
	}
	hub.Close()
	if nc.IsClosed() || nc.NumSubscriptions() != 0 {
		t.Errorf("after Close: closed %v, %d subscriptions left; want open, none", nc.IsClosed(), nc.NumSubscriptions())
	}
	if nc.Opts.ReconnectedCB == nil {
		t.Error("the user's reconnect handler was removed")
	}
	if err := nc.Flush(); err != nil {
		t.Errorf("the user's connection after Close: %v", err)
	}
}

// A connection that is closed already, which never comes back, is refused
// when the Hub starts; one closed under a running Hub is reported once, at
// subscribe, and its publishes fail.
func TestClosedConnection(t *testing.T) {
	t.Parallel()
	nc := connectTo(t, testenv.NATSURL(t))
	nc.Close()
	_, err := edge.New(edge.Options{Sync: natssync.New(natssync.Options{Conn: nc, Channel: testenv.Channel(t)})})
	if !errors.Is(err, nats.ErrConnectionClosed) {
		t.Errorf("edge.New on a closed connection: %v, want nats.ErrConnectionClosed", err)
	}

	nc = connect(t)
	hub, log := newHub(t, natssync.New(natssync.Options{Conn: nc, Channel: testenv.Channel(t)}))
	nc.Close()
	if err := log.Await(t, edge.StageSubscribe, 0, waitTimeout); !errors.Is(err, nats.ErrConnectionClosed) {
		t.Errorf("reported %v, want the closed connection named", err)
	}
	testenv.Publish(t, hub, "/ns", "t", "into a closed connection")
	if err := log.Await(t, edge.StagePublish, 0, waitTimeout); !errors.Is(err, nats.ErrConnectionClosed) {
		t.Errorf("reported %v at StagePublish, want nats.ErrConnectionClosed", err)
	}
	if n := log.Count(edge.StageSubscribe); n != 1 {
		t.Errorf("reported at StageSubscribe %d times, want once: %v", n, log)
	}
}

// reconnecting are the options of a connection that comes back quickly and
// for ever.
func reconnecting() []nats.Option {
	return []nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(20 * time.Millisecond), nats.ReconnectJitter(0, 0)}
}

// After the server restarts, each Hub reports the outage once, and delivery
// resumes.
func TestServerRestart(t *testing.T) {
	t.Parallel()
	server := testenv.StartNATS(t)
	url := server.URL
	channel := testenv.Channel(t)
	a, aLog := newHub(t, natssync.New(natssync.Options{Conn: connectTo(t, url, reconnecting()...), Channel: channel}))
	b, bLog := newHub(t, natssync.New(natssync.Options{Conn: connectTo(t, url, reconnecting()...), Channel: channel}))
	got := testenv.Join(t, b, "/ns", "t")
	stop := testenv.Stream(t, a, "/ns", "t")
	got.WaitFor(t, "the stream", func() bool { return got.HasPrefix("stream-") })

	server.Stop()
	t.Logf("reported: %v", bLog.Await(t, edge.StageSubscribe, 0, waitTimeout))
	server.Restart(t)
	testenv.RelayUntilDelivered(t, a, got, "/ns", "t")
	stop()
	for _, l := range []struct {
		name string
		log  *testenv.ErrorLog
	}{{"a", aLog}, {"b", bLog}} {
		if errs := l.log.Errors(edge.StageSubscribe); len(errs) != 1 {
			t.Errorf("%s reported at StageSubscribe %d times, want once for the outage: %v", l.name, len(errs), errs)
		}
		if errs := l.log.Errors(edge.StageDelivery); len(errs) > 0 {
			t.Errorf("%s reported at StageDelivery: %v", l.name, errs)
		}
	}
}

// A connection that goes silent without closing (a network that drops every
// packet) is reported within seconds, before nats.go notices it, and once
// it passes bytes again, delivery resumes on it without another report.
func TestSilentConnectionIsReported(t *testing.T) {
	t.Parallel()
	url := testenv.NATSURL(t)
	p, err := faultproxy.New(strings.TrimPrefix(url, "nats://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	channel := testenv.Channel(t)
	a, _ := newHub(t, natssync.New(natssync.Options{Conn: connect(t), Channel: channel}))
	viaProxy := connectTo(t, "nats://"+p.Addr())
	b, bLog := newHub(t, natssync.NewWithCheckTiming(natssync.Options{Conn: viaProxy, Channel: channel},
		50*time.Millisecond, 300*time.Millisecond))
	got := testenv.Join(t, b, "/ns", "t")
	testenv.RelayUntilDelivered(t, a, got, "/ns", "t")

	p.Freeze()
	lost := bLog.Await(t, edge.StageSubscribe, 0, waitTimeout)
	if !strings.Contains(lost.Error(), "PING") {
		t.Errorf("reported %v, want the unanswered PING named", lost)
	}
	if s := viaProxy.Status(); s != nats.CONNECTED {
		t.Errorf("the connection is %s; the test wants one that nats.go still takes for connected", s)
	}
	p.Restore()
	testenv.RelayUntilDelivered(t, a, testenv.Join(t, b, "/ns", "t"), "/ns", "t")
	if errs := bLog.Errors(edge.StageSubscribe); len(errs) != 1 {
		t.Errorf("reported at StageSubscribe %d times, want once for the outage: %v", len(errs), errs)
	}
}

// A message of a batch that the server refuses, larger than its max_payload,
// is reported, and the others of the batch are relayed all the same.
func TestBatchGoesPastARefusedMessage(t *testing.T) {
	t.Parallel()
	nc := connect(t)
	channel := testenv.Channel(t)
	a, err := natssync.New(natssync.Options{Conn: nc, Channel: channel})(edge.Instance{ID: edge.NewID(), Report: func(error, edge.Stage) {}})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, _ := newHub(t, natssync.New(natssync.Options{Conn: connect(t), Channel: channel}))
	got := testenv.Join(t, b, "/ns", "t")
	huge := make([]byte, nc.MaxPayload()+1)
	batch := []edge.Message{
		{Namespace: "/ns", Topic: "t", Data: edge.Text("before")},
		{Namespace: "/ns", Topic: "t", Data: edge.Binary(huge)},
		{Namespace: "/ns", Topic: "t", Data: edge.Text("after")},
	}
	err = a.(edge.BatchDriver).PublishBatch(context.Background(), batch)
	if !errors.Is(err, nats.ErrMaxPayload) {
		t.Errorf("PublishBatch: %v, want nats.ErrMaxPayload", err)
	}
	got.WaitText(t, "before")
	got.WaitText(t, "after")
}
