package pgsync_test

import (
	"context"
	"fmt"
	"hash/fnv"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgesync/edgesync/drivers/drivertest"
	"github.com/edgesync/edgesync/drivers/pgsync"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/internal/testenv"
)

func TestRoutedConformance(t *testing.T) {
	connString := testenv.PostgresURL(t)
	pool := newPool(t, connString)
	t.Run("Pool", func(t *testing.T) {
		drivertest.RunRoutedDriverTests(t, func(tb testing.TB, channel string) edge.Sync {
			return pgsync.New(pgsync.Options{Pool: pool, Channel: channel, Routed: true})
		})
	})
	// One bucket: every topic shares its channel, and the receivers
	// filter.
	t.Run("ConnStringOneBucket", func(t *testing.T) {
		drivertest.RunRoutedDriverTests(t, func(tb testing.TB, channel string) edge.Sync {
			return pgsync.New(pgsync.Options{ConnString: connString, Channel: channel, Routed: true, RouteBuckets: 1})
		})
	})
}

// captured builds the driver of opts and keeps it, for the export hooks.
func captured(opts pgsync.Options) (edge.Sync, func() edge.Driver) {
	var mu sync.Mutex
	var d edge.Driver
	return func(inst edge.Instance) (edge.Driver, error) {
			dr, err := pgsync.New(opts)(inst)
			mu.Lock()
			d = dr
			mu.Unlock()
			return dr, err
		}, func() edge.Driver {
			mu.Lock()
			defer mu.Unlock()
			return d
		}
}

// awaitRouted publishes probes on topic from hub until ep receives one, and
// returns then: the route to ep's instance is in place.
func awaitRouted(t *testing.T, hub *edge.Hub, ns, topic string, ep *endpoint) {
	t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(waitTimeout)
	for i := 0; ; i++ {
		if err := hub.Publish(context.Background(), edge.Message{Namespace: ns, Topic: topic, Data: edge.Text(fmt.Sprint("probe ", i))}); err != nil {
			t.Fatalf("Publish: %v", err)
		}
		select {
		case got := <-ep.ch:
			if strings.HasPrefix(got.String(), "probe ") {
				return
			}
		case <-tick.C:
		case <-deadline:
			t.Fatalf("no route to topic %q within %v", topic, waitTimeout)
		}
	}
}

// awaitBody reads ep until it receives want.
func awaitBody(t *testing.T, ep *endpoint, want string) {
	t.Helper()
	for got := ep.next(t); got.String() != want; got = ep.next(t) {
	}
}

// listening returns the channels the listener of d LISTENs on, sorted.
func listening(t *testing.T, d edge.Driver) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	names, err := pgsync.ListeningChannels(ctx, d)
	if err != nil {
		t.Fatalf("ListeningChannels: %v", err)
	}
	slices.Sort(names)
	return names
}

// awaitListening waits until the listener of d LISTENs on want exactly.
func awaitListening(t *testing.T, d edge.Driver, want ...string) []string {
	t.Helper()
	slices.Sort(want)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.Now().Add(waitTimeout)
	for {
		got := listening(t, d)
		if slices.Equal(got, want) {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("listening on %q, want %q", got, want)
		}
		<-tick.C
	}
}

func TestRoutedOnlyWhenAsked(t *testing.T) {
	url := testenv.PostgresURL(t)
	inst := edge.Instance{ID: edge.NewID(), Report: func(error, edge.Stage) {}}
	d, err := pgsync.New(pgsync.Options{ConnString: url, Channel: testenv.Channel(t)})(inst)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, ok := d.(edge.RoutedDriver); ok {
		t.Errorf("a broadcast driver is an edge.RoutedDriver")
	}
	if _, ok := d.(edge.BatchDriver); !ok {
		t.Errorf("a broadcast driver is not an edge.BatchDriver")
	}
	r, err := pgsync.New(pgsync.Options{ConnString: url, Channel: testenv.Channel(t), Routed: true})(inst)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, ok := r.(edge.BatchDriver); !ok {
		t.Errorf("a routed driver is not an edge.BatchDriver")
	}
}

func TestRouteBucketsOption(t *testing.T) {
	url := testenv.PostgresURL(t)
	inst := edge.Instance{ID: edge.NewID(), Report: func(error, edge.Stage) {}}
	for _, n := range []int{-1, pgsync.MaxRouteBuckets + 1} {
		d, err := pgsync.New(pgsync.Options{ConnString: url, Channel: "c", Routed: true, RouteBuckets: n})(inst)
		if err == nil {
			d.Close()
			t.Errorf("RouteBuckets %d: no error", n)
		} else if !strings.Contains(err.Error(), "RouteBuckets") {
			t.Errorf("RouteBuckets %d: %v, want the option named", n, err)
		}
	}
	long := strings.Repeat("é", pgsync.MaxChannelLength/2)
	name := pgsync.BucketChannel(long, pgsync.MaxRouteBuckets-1)
	if len(name) > pgsync.MaxChannelLength {
		t.Errorf("bucket channel %q is %d bytes long", name, len(name))
	}
	if a, b := pgsync.BucketChannel("Chat", 1), pgsync.BucketChannel("chat", 1); a == b {
		t.Errorf("channels Chat and chat share bucket channel %q", a)
	}
}

// Many topics on few buckets: the listener LISTENs on the buckets, never
// more, and on nothing but its channel once every topic is gone.
func TestRouteBucketsBoundListens(t *testing.T) {
	t.Parallel()
	const buckets = 4
	url := testenv.PostgresURL(t)
	channel := testenv.Channel(t)
	pub, _ := newHub(t, pgsync.New(pgsync.Options{ConnString: url, Channel: channel, Routed: true, RouteBuckets: buckets}))
	build, driver := captured(pgsync.Options{ConnString: url, Channel: channel, Routed: true, RouteBuckets: buckets, RouteLinger: -1})
	sub, _ := newHub(t, build)
	var members []*edge.Member
	var last *endpoint
	for i := range 200 {
		m, ep := join(t, sub, "/b", fmt.Sprint("topic ", i))
		members, last = append(members, m), ep
	}
	awaitRouted(t, pub, "/b", "topic 199", last)
	all := []string{channel}
	for i := range buckets {
		all = append(all, pgsync.BucketChannel(channel, i))
	}
	awaitListening(t, driver(), all...)
	for _, m := range members {
		m.Leave()
	}
	awaitListening(t, driver(), channel)
}

// A bucket released and wanted again within the linger is never
// UNLISTENed; one released for good is, once the linger is over.
func TestRouteLinger(t *testing.T) {
	t.Parallel()
	const linger = time.Second
	url := testenv.PostgresURL(t)
	channel := testenv.Channel(t)
	pub, _ := newHub(t, pgsync.New(pgsync.Options{ConnString: url, Channel: channel, Routed: true}))
	build, driver := captured(pgsync.Options{ConnString: url, Channel: channel, Routed: true, RouteLinger: linger})
	sub, _ := newHub(t, build)
	// The member's own topic is routed too: pick a topic in another
	// bucket.
	m, ep := join(t, sub, "/l", "first")
	own := pgsync.TopicBucket(edge.PeerTopicPrefix+m.ID(), pgsync.DefaultRouteBuckets)
	topic := "lingering"
	for i := 0; pgsync.TopicBucket(topic, pgsync.DefaultRouteBuckets) == own; i++ {
		topic = fmt.Sprint("lingering ", i)
	}
	if err := m.Subscribe(topic); err != nil {
		t.Fatal(err)
	}
	if err := m.Unsubscribe("first"); err != nil {
		t.Fatal(err)
	}
	awaitRouted(t, pub, "/l", topic, ep)
	stay := []string{channel, pgsync.BucketChannel(channel, own)}
	withTopic := append(slices.Clone(stay), pgsync.BucketChannel(channel, pgsync.TopicBucket(topic, pgsync.DefaultRouteBuckets)))
	awaitListening(t, driver(), withTopic...)

	// Flapping within the linger costs no LISTEN nor UNLISTEN.
	changes := pgsync.RouteChanges(driver())
	for range 50 {
		if err := m.Unsubscribe(topic); err != nil {
			t.Fatal(err)
		}
		if err := m.Subscribe(topic); err != nil {
			t.Fatal(err)
		}
	}
	if got := listening(t, driver()); !slices.Equal(got, sorted(withTopic)) {
		t.Errorf("after flapping, listening on %q, want %q", got, withTopic)
	}
	if n := pgsync.RouteChanges(driver()) - changes; n != 0 {
		t.Errorf("flapping within the linger ran LISTEN or UNLISTEN %d times", n)
	}
	awaitRouted(t, pub, "/l", topic, ep)

	released := time.Now()
	if err := m.Unsubscribe(topic); err != nil {
		t.Fatal(err)
	}
	got := listening(t, driver())
	if time.Since(released) < linger && !slices.Equal(got, sorted(withTopic)) {
		t.Errorf("within the linger, listening on %q, want %q", got, withTopic)
	}
	awaitListening(t, driver(), stay...)
	if d := time.Since(released); d < linger {
		t.Errorf("UNLISTENed %v after the topic was released, before the linger (%v)", d, linger)
	}
	m.Leave()
	awaitListening(t, driver(), channel)
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// Peers that churn leave no LISTEN behind.
func TestRoutedChurnLeaksNoListen(t *testing.T) {
	t.Parallel()
	url := testenv.PostgresURL(t)
	channel := testenv.Channel(t)
	build, driver := captured(pgsync.Options{ConnString: url, Channel: channel, Routed: true, RouteLinger: 50 * time.Millisecond})
	sub, _ := newHub(t, build)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 50 {
				m, err := sub.Join(edge.NewID(), "/c", &endpoint{ch: make(chan edge.Data, 1)})
				if err != nil {
					t.Error(err)
					return
				}
				for k := range 5 {
					if err := m.Subscribe(fmt.Sprintf("churn %d %d %d", g, i, k)); err != nil {
						t.Error(err)
					}
				}
				m.Leave()
			}
		})
	}
	wg.Wait()
	awaitListening(t, driver(), channel)
	if n := pgsync.RouteChanges(driver()); n == 0 {
		t.Errorf("no LISTEN was run")
	}
}

// The listener's backend terminated: the new listening connection LISTENs
// on every wanted bucket again, and every topic is delivered again.
func TestRoutedListenerTerminated(t *testing.T) {
	t.Parallel()
	url := testenv.PostgresURL(t)
	pool := newPool(t, url)
	channel := testenv.Channel(t)
	pub, _ := newHub(t, pgsync.New(pgsync.Options{Pool: pool, Channel: channel, Routed: true}))
	build, driver := captured(pgsync.Options{ConnString: url, Channel: channel, Routed: true})
	sub, rep := newHub(t, build)
	topics := []string{"alpha", "beta", "gamma", "delta"}
	eps := make([]*endpoint, len(topics))
	for i, topic := range topics {
		_, eps[i] = join(t, sub, "/t", topic)
	}
	for i, topic := range topics {
		awaitRouted(t, pub, "/t", topic, eps[i])
	}
	before := listening(t, driver())
	if len(before) < 2 {
		t.Fatalf("listening on %q only", before)
	}

	ctx := testCtx(t)
	pid, err := pgsync.ListenerPID(ctx, driver())
	if err != nil {
		t.Fatal(err)
	}
	var app string
	if err := pool.QueryRow(ctx, "SELECT application_name FROM pg_stat_activity WHERE pid = $1", pid).Scan(&app); err != nil {
		t.Fatal(err)
	}
	if app != pgsync.ListenApplicationName {
		t.Errorf("the listener's application_name is %q, want %q", app, pgsync.ListenApplicationName)
	}
	if _, err := pool.Exec(ctx, "SELECT pg_terminate_backend($1)", pid); err != nil {
		t.Fatal(err)
	}
	rep.Await(t, edge.StageSubscribe, 0, waitTimeout)

	for i, topic := range topics {
		awaitRouted(t, pub, "/t", topic, eps[i])
	}
	if got := listening(t, driver()); !slices.Equal(got, before) {
		t.Errorf("after reconnecting, listening on %q, want %q", got, before)
	}
	newPID, err := pgsync.ListenerPID(ctx, driver())
	if err != nil {
		t.Fatal(err)
	}
	if newPID == pid {
		t.Errorf("the listening connection is still pid %d", pid)
	}
	for i, topic := range topics {
		body := "after " + topic
		if err := pub.Publish(ctx, edge.Message{Namespace: "/t", Topic: topic, Data: edge.Text(body)}); err != nil {
			t.Fatal(err)
		}
		awaitBody(t, eps[i], body)
	}
}

// A message too large for NOTIFY travels by reference on its topic's
// bucket channel, and reaches only the instances that route its topic.
func TestRoutedLargeMessages(t *testing.T) {
	t.Parallel()
	pool := newPool(t, testenv.PostgresURL(t))
	channel := testenv.Channel(t)
	t.Cleanup(func() { deletePayloads(t, pool, channel) })
	opts := pgsync.Options{Pool: pool, Channel: channel, Routed: true}
	a, aRep := newHub(t, pgsync.New(opts))
	b, bRep := newHub(t, pgsync.New(opts))
	c, _ := newHub(t, pgsync.New(opts))
	_, ep := join(t, b, "/big", "large")
	_, other := join(t, c, "/big", "small")
	awaitRouted(t, a, "/big", "large", ep)
	awaitRouted(t, a, "/big", "small", other)
	ctx := testCtx(t)
	// Every probe of c is in before this one.
	if err := a.Publish(ctx, edge.Message{Namespace: "/big", Topic: "small", Data: edge.Text("sync")}); err != nil {
		t.Fatal(err)
	}
	awaitBody(t, other, "sync")
	received := c.Stats().Received

	big := strings.Repeat("x", 3*pgsync.NotifyPayloadLimit)
	for i := range 3 {
		body := fmt.Sprint(i, big)
		if err := a.Publish(ctx, edge.Message{Namespace: "/big", Topic: "large", Data: edge.Text(body)}); err != nil {
			t.Fatal(err)
		}
		awaitBody(t, ep, body)
	}
	// A namespace-wide one too.
	if err := a.Publish(ctx, edge.Message{Topic: "large", Data: edge.Text("wide " + big)}); err != nil {
		t.Fatal(err)
	}
	awaitBody(t, ep, "wide "+big)
	if err := a.Publish(ctx, edge.Message{Namespace: "/big", Topic: "small", Data: edge.Text("marker")}); err != nil {
		t.Fatal(err)
	}
	awaitBody(t, other, "marker")
	if n := c.Stats().Received - received; n != 1 {
		t.Errorf("hub C received %d messages, want 1: it received the large topic, which it does not route", n)
	}
	for _, log := range []*testenv.ErrorLog{aRep, bRep} {
		if errs := log.Errors(edge.StageDelivery); len(errs) > 0 {
			t.Errorf("reported at StageDelivery: %v", errs)
		}
		if errs := log.Errors(edge.StagePublish); len(errs) > 0 {
			t.Errorf("reported at StagePublish: %v", errs)
		}
	}
}

func TestTopicBucketIsFNV1a(t *testing.T) {
	for _, topic := range []string{"", "lobby", "$peer:abc", "é\x00"} {
		h := fnv.New32a()
		h.Write([]byte(topic))
		if got, want := pgsync.TopicBucket(topic, 1000), int(h.Sum32()%1000); got != want {
			t.Errorf("TopicBucket(%q) = %d, want %d", topic, got, want)
		}
	}
}
