package natssync_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/edgesync/edgesync/drivers/drivertest"
	"github.com/edgesync/edgesync/drivers/natssync"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/envelope"
	"github.com/edgesync/edgesync/internal/testenv"
)

func TestRoutedDriverConformance(t *testing.T) {
	nc := connect(t)
	drivertest.RunRoutedDriverTests(t, func(tb testing.TB, channel string) edge.Sync {
		return natssync.New(natssync.Options{Conn: nc, Channel: channel, Routed: true})
	})
}

// Broadcast stays the default: its driver routes nothing.
func TestBroadcastIsNotRouted(t *testing.T) {
	d, err := natssync.New(natssync.Options{Conn: connect(t), Channel: testenv.Channel(t)})(edge.Instance{ID: edge.NewID()})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, ok := d.(edge.RoutedDriver); ok {
		t.Fatalf("the broadcast driver %T is an edge.RoutedDriver", d)
	}
}

// joinTopics adds a member subscribed to topics in namespace to hub.
func joinTopics(t *testing.T, hub *edge.Hub, namespace string, topics ...string) (*edge.Member, *testenv.Sink) {
	t.Helper()
	s := testenv.NewSink()
	m, err := hub.Join(edge.NewID(), namespace, s)
	if err != nil {
		t.Fatalf("Join: %v", err)
	}
	t.Cleanup(m.Leave)
	for _, topic := range topics {
		if err := m.Subscribe(topic); err != nil {
			t.Fatalf("Subscribe: %v", err)
		}
	}
	return m, s
}

// routeSubjects returns the routed subscriptions of the topics and of the
// members' own topics, sorted and without duplicates.
func routeSubjects(channel string, topics []string, members ...*edge.Member) []string {
	var out []string
	for _, topic := range topics {
		out = append(out, natssync.RouteSubject(channel, topic))
	}
	for _, m := range members {
		out = append(out, natssync.RouteSubject(channel, edge.PeerTopicPrefix+m.ID()))
	}
	return slices.Compact(slices.Sorted(slices.Values(out)))
}

// awaitSubscribed waits until the driver holds the subscriptions want, and
// its connection, which holds no other, as many.
func awaitSubscribed(t *testing.T, probe *natssync.RouteProbe, nc *nats.Conn, want []string) {
	t.Helper()
	if want == nil {
		want = []string{}
	}
	deadline := time.Now().Add(waitTimeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		probe.Settle()
		got := slices.Sorted(slices.Values(probe.Subscribed()))
		n := nc.NumSubscriptions()
		if slices.Equal(got, want) && n == len(want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("subscribed %q (%d on the connection), want %q", got, n, want)
		}
		<-tick.C
	}
}

// A routed instance subscribes one subject per routed topic, with a wildcard
// for the namespace, and never the whole channel; a topic whose name is too
// long to escape works as well as any.
func TestRoutedSubscribesOnlyRoutedTopics(t *testing.T) {
	t.Parallel()
	channel := testenv.Channel(t)
	a, _ := newHub(t, natssync.New(natssync.Options{Conn: connect(t), Channel: channel, Routed: true}))
	nc := connect(t)
	rs, probe := natssync.NewRoutedForTest(natssync.Options{Conn: nc, Channel: channel})
	b, bLog := newHub(t, rs)
	long := strings.Repeat("a long topic/", 20)
	topics := []string{"t-1", "t-2", long}
	m, got := joinTopics(t, b, "/ns", topics...)
	for _, topic := range topics {
		testenv.RelayUntilDelivered(t, a, got, "/ns", topic)
	}
	want := routeSubjects(channel, topics, m)
	for _, s := range want {
		if !strings.HasPrefix(s, channel+".*.") {
			t.Errorf("subscription %q, want one with a wildcard namespace", s)
		}
	}
	awaitSubscribed(t, probe, nc, want)
	if errs := bLog.Errors(edge.StageDelivery); len(errs) > 0 {
		t.Errorf("reported at StageDelivery: %v", errs)
	}
}

// A message that arrives on a routed subject but whose envelope names
// another topic (names that hash to the same token share a subject) is
// dropped; the routed topic is delivered.
func TestRoutedFiltersByEnvelopeTopic(t *testing.T) {
	t.Parallel()
	channel := testenv.Channel(t)
	raw := connect(t)
	b, bLog := newHub(t, natssync.New(natssync.Options{Conn: connect(t), Channel: channel, Routed: true}))
	long := strings.Repeat("x", 200)
	_, got := joinTopics(t, b, "/ns", long)
	subj := natssync.Subject(channel, "/ns", long)
	stranger := edge.NewID()
	other, _ := envelope.Encode(stranger, edge.Message{Namespace: "/ns", Topic: long + "y", Data: edge.Text("another topic")})
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for i := 0; !got.HasPrefix("probe-"); i++ {
		if err := raw.Publish(subj, other); err != nil {
			t.Fatal(err)
		}
		mine, _ := envelope.Encode(stranger, edge.Message{Namespace: "/ns", Topic: long, Data: edge.Text(fmt.Sprint("probe-", i))})
		if err := raw.Publish(subj, mine); err != nil {
			t.Fatal(err)
		}
		select {
		case <-tick.C:
		case <-deadline.C:
			t.Fatal("no probe delivered")
		}
	}
	// The same publisher, the same subject: what came before it is handled.
	if got.Has("another topic") {
		t.Error("a message of another topic on the routed subject was delivered")
	}
	if errs := bLog.Errors(edge.StageDelivery); len(errs) > 0 {
		t.Errorf("reported at StageDelivery: %v", errs)
	}
}

// A broadcast instance receives what a routed one publishes.
func TestBroadcastHearsRouted(t *testing.T) {
	t.Parallel()
	channel := testenv.Channel(t)
	a, _ := newHub(t, natssync.New(natssync.Options{Conn: connect(t), Channel: channel, Routed: true}))
	b, _ := newHub(t, natssync.New(natssync.Options{Conn: connect(t), Channel: channel}))
	testenv.RelayUntilDelivered(t, a, testenv.Join(t, b, "/ns", "t"), "/ns", "t")
}

// A topic that is unsubscribed and subscribed again within the linger costs
// no UNSUB and no SUB, and keeps being delivered.
func TestRoutedLingerAbsorbsFlapping(t *testing.T) {
	t.Parallel()
	channel := testenv.Channel(t)
	a, _ := newHub(t, natssync.New(natssync.Options{Conn: connect(t), Channel: channel, Routed: true}))
	rs, probe := natssync.NewRoutedForTest(natssync.Options{Conn: connect(t), Channel: channel, RouteLinger: time.Minute})
	b, _ := newHub(t, rs)
	m, got := joinTopics(t, b, "/ns", "flap")
	testenv.RelayUntilDelivered(t, a, got, "/ns", "flap")
	probe.Settle()
	subs, unsubs := probe.Counts()
	for range 100 {
		if err := m.Unsubscribe("flap"); err != nil {
			t.Fatal(err)
		}
		if err := m.Subscribe("flap"); err != nil {
			t.Fatal(err)
		}
	}
	probe.Settle()
	if s, u := probe.Counts(); s != subs || u != unsubs {
		t.Errorf("flapping made %d subscriptions and ended %d, want none", s-subs, u-unsubs)
	}
	testenv.Publish(t, a, "/ns", "flap", "after flapping")
	got.WaitText(t, "after flapping")
}

// With a negative linger, a topic no longer routed is unsubscribed at once.
func TestRoutedNegativeLingerReleasesAtOnce(t *testing.T) {
	t.Parallel()
	channel := testenv.Channel(t)
	nc := connect(t)
	rs, probe := natssync.NewRoutedForTest(natssync.Options{Conn: nc, Channel: channel, RouteLinger: -1})
	b, _ := newHub(t, rs)
	m, _ := joinTopics(t, b, "/ns", "t")
	awaitSubscribed(t, probe, nc, routeSubjects(channel, []string{"t"}, m))
	if err := m.Unsubscribe("t"); err != nil {
		t.Fatal(err)
	}
	probe.Settle() // a single pass releases it
	if got := probe.Subscribed(); len(got) != 1 || nc.NumSubscriptions() != 1 {
		t.Errorf("subscribed %q (%d on the connection), want the member's own topic only", got, nc.NumSubscriptions())
	}
}

// After peers churn, the subscriptions come back to those of the topics
// still subscribed, and to none once every peer has left.
func TestRoutedChurnLeaksNoSubscription(t *testing.T) {
	t.Parallel()
	channel := testenv.Channel(t)
	nc := connect(t)
	rs, probe := natssync.NewRoutedForTest(natssync.Options{Conn: nc, Channel: channel, RouteLinger: 20 * time.Millisecond})
	b, _ := newHub(t, rs)
	a, _ := newHub(t, natssync.New(natssync.Options{Conn: connect(t), Channel: channel, Routed: true}))

	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for range 50 {
				m, err := b.Join(edge.NewID(), "/churn", testenv.NewSink())
				if err != nil {
					t.Error(err)
					return
				}
				for range 3 {
					if err := m.Subscribe(fmt.Sprint("churn-", rng.IntN(300))); err != nil {
						t.Error(err)
					}
				}
				m.Leave()
			}
		})
	}
	stay, got := joinTopics(t, b, "/churn", "stays-1", "stays-2")
	wg.Wait()
	testenv.RelayUntilDelivered(t, a, got, "/churn", "stays-1")
	awaitSubscribed(t, probe, nc, routeSubjects(channel, []string{"stays-1", "stays-2"}, stay))
	stay.Leave()
	awaitSubscribed(t, probe, nc, nil)
}

// After the server restarts, a routed Hub's subscriptions come back with the
// connection, and delivery resumes on each routed topic, including those
// routed during the outage.
func TestRoutedServerRestart(t *testing.T) {
	t.Parallel()
	server := testenv.StartNATS(t)
	url := server.URL
	channel := testenv.Channel(t)
	a, _ := newHub(t, natssync.New(natssync.Options{Conn: connectTo(t, url, reconnecting()...), Channel: channel, Routed: true}))
	bConn := connectTo(t, url, reconnecting()...)
	rs, probe := natssync.NewRoutedForTest(natssync.Options{Conn: bConn, Channel: channel})
	b, bLog := newHub(t, rs)
	topics := []string{"k-0", "k-1", "k-2"}
	m, got := joinTopics(t, b, "/ns", topics...)
	for _, topic := range topics {
		testenv.RelayUntilDelivered(t, a, got, "/ns", topic)
	}

	server.Stop()
	t.Logf("reported: %v", bLog.Await(t, edge.StageSubscribe, 0, waitTimeout))
	// Routed while the server is down.
	n, during := joinTopics(t, b, "/ns", "k-during")
	probe.Settle()
	server.Restart(t)
	members := []*edge.Member{m, n}
	for _, topic := range topics {
		mm, s := joinTopics(t, b, "/ns", topic) // a sink with nothing yet
		testenv.RelayUntilDelivered(t, a, s, "/ns", topic)
		members = append(members, mm)
	}
	testenv.RelayUntilDelivered(t, a, during, "/ns", "k-during")
	if errs := bLog.Errors(edge.StageSubscribe); len(errs) != 1 {
		t.Errorf("reported at StageSubscribe %d times, want once: %v", len(errs), errs)
	}
	awaitSubscribed(t, probe, bConn, routeSubjects(channel, append(topics, "k-during"), members...))
}
