package drivertest

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgesync/edgesync/edge"
)

// routeRetry is how long a probe waits for its delivery before the next is
// published, while a route is being set up in the background.
const routeRetry = 50 * time.Millisecond

// RunRoutedDriverTests runs the cases of a driver that relays by topic
// (edge.RoutedDriver), through real Hubs: newSync must return the Sync of a
// routed instance. RunDriverTests, whose cases use bare drivers that route
// nothing, is for the driver's broadcast mode.
//
// The cases check that a topic reaches the instances that route it and not
// the others; that topics that stay subscribed lose nothing while other
// topics are subscribed and unsubscribed over and over; that a
// namespace-wide publish reaches every namespace of the instances that route
// its topic; that Hub.SendTo reaches a peer through its own topic; and that
// many topics, which a driver may hash into shared buckets, each reach their
// own subscribers only.
//
// A route is set up in the background, so the cases publish probes until
// one arrives before they count. They assume what every driver here gives:
// one publisher's messages arrive in the order it sent them.
func RunRoutedDriverTests(t *testing.T, newSync func(tb testing.TB, channel string) edge.Sync) {
	t.Helper()
	s := &routedSuite{newSync: newSync}
	t.Run("IsRouted", s.testIsRouted)
	t.Run("TopicReachesOnlyInstancesThatRouteIt", s.testOnlyRouted)
	t.Run("ChurnLosesNothingOfSteadyTopics", s.testChurn)
	t.Run("NamespaceWidePublish", s.testNamespaceWide)
	t.Run("SendToReachesAPeerOnItsTopic", s.testSendTo)
	t.Run("ManyTopicsStayApart", s.testManyTopics)
}

type routedSuite struct {
	newSync func(tb testing.TB, channel string) edge.Sync
}

// member is a peer joined to a Hub, with what it received.
type member struct {
	*edge.Member
	ep *endpoint
}

func joinMember(t *testing.T, hub *edge.Hub, ns string, topics ...string) member {
	t.Helper()
	ep := &endpoint{}
	ep.inbox.init()
	m, err := hub.Join(edge.NewID(), ns, ep)
	if err != nil {
		t.Fatalf("Join: %v", err)
	}
	t.Cleanup(m.Leave)
	for _, topic := range topics {
		if err := m.Subscribe(topic); err != nil {
			t.Fatalf("Subscribe(%q): %v", topic, err)
		}
	}
	return member{m, ep}
}

// received returns the bodies m has received.
func (m member) received() []string {
	var out []string
	for _, msg := range m.ep.inbox.snapshot() {
		out = append(out, string(msg.Data.Bytes))
	}
	return out
}

// awaitRoute publishes probes on topic in namespace from hub until m
// receives one: the route to m's instance is then in place.
func awaitRoute(t *testing.T, hub *edge.Hub, ns, topic string, m member) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for i := 0; ; i++ {
		probe := fmt.Sprintf("route probe %s %d", topic, i)
		if err := hub.Publish(context.Background(), edge.Message{Namespace: ns, Topic: topic, Data: edge.Text(probe)}); err != nil {
			t.Fatalf("Publish: %v", err)
		}
		wait := time.NewTimer(routeRetry)
		for {
			got := false
			for _, body := range m.received() {
				if strings.HasPrefix(body, "route probe "+topic+" ") {
					got = true
				}
			}
			if got {
				wait.Stop()
				return
			}
			select {
			case <-m.ep.inbox.notify:
				continue
			case <-wait.C:
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no route to topic %q within %v", topic, waitTimeout)
		}
	}
}

// countPrefix counts the bodies of m that begin with prefix.
func countPrefix(m member, prefix string) map[string]int {
	seen := make(map[string]int)
	for _, body := range m.received() {
		if strings.HasPrefix(body, prefix) {
			seen[body]++
		}
	}
	return seen
}

// awaitAll waits until m has received every body of want, and checks that
// each came once.
func awaitAll(t *testing.T, m member, prefix string, want []string) {
	t.Helper()
	m.ep.inbox.waitFor(t, bulkTimeout, fmt.Sprintf("%d messages %q…", len(want), prefix), func([]edge.Message) bool {
		return len(countPrefix(m, prefix)) >= len(want)
	})
	seen := countPrefix(m, prefix)
	for _, body := range want {
		if seen[body] != 1 {
			t.Errorf("%q arrived %d times, want once", body, seen[body])
		}
	}
}

func publishN(t *testing.T, hub *edge.Hub, ns, topic, prefix string, n int) []string {
	t.Helper()
	bodies := make([]string, n)
	for i := range n {
		bodies[i] = fmt.Sprintf("%s%d", prefix, i)
		if err := hub.Publish(context.Background(), edge.Message{Namespace: ns, Topic: topic, Data: edge.Text(bodies[i])}); err != nil {
			t.Fatalf("Publish: %v", err)
		}
	}
	return bodies
}

func (s *routedSuite) testIsRouted(t *testing.T) {
	d, err := buildDriver(s.newSync(t, newChannel()), edge.Instance{ID: edge.NewID(), Report: func(error, edge.Stage) {}})
	if err != nil {
		t.Fatalf("Sync: %v", err)
	}
	defer d.Close()
	if _, ok := d.(edge.RoutedDriver); !ok {
		t.Fatalf("%T is not an edge.RoutedDriver", d)
	}
}

// testOnlyRouted publishes on a topic that one instance routes and another
// does not: the second never receives it, as its Received count shows.
func (s *routedSuite) testOnlyRouted(t *testing.T) {
	const ns = "/routed"
	ch := newChannel()
	hubA, _ := newHub(t, s.newSync, "hub A", ch, 0)
	hubB, _ := newHub(t, s.newSync, "hub B", ch, 0)
	hubC, _ := newHub(t, s.newSync, "hub C", ch, 0)
	x, y := "x-"+edge.NewID(), "y-"+edge.NewID()
	b := joinMember(t, hubB, ns, x)
	c := joinMember(t, hubC, ns, y)
	awaitRoute(t, hubA, ns, x, b)
	awaitRoute(t, hubA, ns, y, c)

	want := publishN(t, hubA, ns, x, "on x ", 100)
	marker := publishN(t, hubA, ns, y, "on y ", 1)
	awaitAll(t, b, "on x ", want)
	awaitAll(t, c, "on y ", marker)
	// Everything hub C received went to its member: none of x came.
	if got, delivered := hubC.Stats().Received, uint64(len(c.received())); got != delivered {
		t.Errorf("hub C received %d messages and delivered %d: it received topic %q, which it does not route", got, delivered, x)
	}
}

// testChurn subscribes and unsubscribes one topic over and over while
// another topic, subscribed throughout, carries a stream: the stream loses
// nothing, and the churned topic works once subscribed again.
func (s *routedSuite) testChurn(t *testing.T) {
	const ns = "/churn"
	ch := newChannel()
	hubA, _ := newHub(t, s.newSync, "hub A", ch, 0)
	hubB, _ := newHub(t, s.newSync, "hub B", ch, 0)
	steady, churned := "steady-"+edge.NewID(), "churned-"+edge.NewID()
	keep := joinMember(t, hubB, ns, steady)
	flap := joinMember(t, hubB, ns)
	awaitRoute(t, hubA, ns, steady, keep)

	var wg sync.WaitGroup
	var want []string
	wg.Go(func() { want = publishN(t, hubA, ns, steady, "steady ", 500) })
	for range 200 {
		if err := flap.Subscribe(churned); err != nil {
			t.Fatal(err)
		}
		if err := flap.Unsubscribe(churned); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	awaitAll(t, keep, "steady ", want)

	if err := flap.Subscribe(churned); err != nil {
		t.Fatal(err)
	}
	awaitRoute(t, hubA, ns, churned, flap)
}

// testNamespaceWide publishes with namespace "": every namespace of an
// instance that routes the topic gets it.
func (s *routedSuite) testNamespaceWide(t *testing.T) {
	ch := newChannel()
	hubA, _ := newHub(t, s.newSync, "hub A", ch, 0)
	hubB, _ := newHub(t, s.newSync, "hub B", ch, 0)
	topic := "wide-" + edge.NewID()
	n := joinMember(t, hubB, "/n", topic)
	m := joinMember(t, hubB, "/m", topic)
	awaitRoute(t, hubA, "/n", topic, n)
	want := publishN(t, hubA, "", topic, "to all ", 20)
	awaitAll(t, n, "to all ", want)
	awaitAll(t, m, "to all ", want)
}

// testSendTo sends to a peer of another instance by id.
func (s *routedSuite) testSendTo(t *testing.T) {
	ch := newChannel()
	hubA, _ := newHub(t, s.newSync, "hub A", ch, 0)
	hubB, _ := newHub(t, s.newSync, "hub B", ch, 0)
	topic := "any-" + edge.NewID()
	b := joinMember(t, hubB, "/p", topic)
	other := joinMember(t, hubB, "/p", topic)
	// Once a topic of hub B is routed, so is b's own, which Join routed
	// first: one publisher's messages keep their order, so probe both.
	awaitRoute(t, hubA, "/p", topic, b)
	deadline := time.Now().Add(waitTimeout)
	for i := 0; ; i++ {
		body := fmt.Sprintf("just for b %d", i)
		if err := hubA.SendTo(context.Background(), b.ID(), edge.Text(body)); err != nil {
			t.Fatalf("SendTo: %v", err)
		}
		if err := hubA.Publish(context.Background(), edge.Message{Namespace: "/p", Topic: topic, Data: edge.Text("after " + body)}); err != nil {
			t.Fatal(err)
		}
		b.ep.inbox.waitFor(t, waitTimeout, "the message after a SendTo", func([]edge.Message) bool {
			return countPrefix(b, "after "+body)["after "+body] > 0
		})
		if countPrefix(b, "just for b ")[body] == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("SendTo never reached the peer")
		}
	}
	if n := len(countPrefix(other, "just for b ")); n != 0 {
		t.Errorf("another peer received %d messages sent to b", n)
	}
}

// testManyTopics gives each of many topics its own subscriber: each
// receives its topic's messages and no other's, whatever buckets the driver
// hashes them into.
func (s *routedSuite) testManyTopics(t *testing.T) {
	const (
		ns     = "/many"
		topics = 100
	)
	ch := newChannel()
	hubA, _ := newHub(t, s.newSync, "hub A", ch, 0)
	hubB, _ := newHub(t, s.newSync, "hub B", ch, 0)
	prefix := "many-" + edge.NewID() + "-"
	members := make([]member, topics)
	for i := range members {
		members[i] = joinMember(t, hubB, ns, fmt.Sprint(prefix, i))
	}
	for i, m := range members {
		awaitRoute(t, hubA, ns, fmt.Sprint(prefix, i), m)
	}
	for i := range members {
		publishN(t, hubA, ns, fmt.Sprint(prefix, i), fmt.Sprintf("topic %d: ", i), 3)
	}
	for i, m := range members {
		awaitAll(t, m, fmt.Sprintf("topic %d: ", i), []string{fmt.Sprintf("topic %d: 0", i), fmt.Sprintf("topic %d: 1", i), fmt.Sprintf("topic %d: 2", i)})
		for _, body := range m.received() {
			if !strings.HasPrefix(body, fmt.Sprintf("topic %d: ", i)) && !strings.HasPrefix(body, "route probe ") {
				t.Errorf("topic %d's subscriber received %q", i, body)
			}
		}
	}
}
