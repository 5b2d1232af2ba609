package redissync_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/edgesync/edgesync/drivers/drivertest"
	"github.com/edgesync/edgesync/drivers/redissync"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/internal/testenv"
)

func TestRoutedDriverConformance(t *testing.T) {
	client := newClient(t)
	drivertest.RunRoutedDriverTests(t, func(tb testing.TB, channel string) edge.Sync {
		return redissync.New(redissync.Options{Client: client, Channel: channel, Routed: true})
	})
}

// Broadcast stays the default: its driver routes nothing.
func TestBroadcastIsNotRouted(t *testing.T) {
	d, err := redissync.New(redissync.Options{Client: newClient(t), Channel: testenv.Channel(t)})(edge.Instance{ID: edge.NewID()})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, ok := d.(edge.RoutedDriver); ok {
		t.Fatalf("the broadcast driver %T is an edge.RoutedDriver", d)
	}
}

// A number of buckets out of range is an error, not a panic.
func TestRouteBucketsAreValidated(t *testing.T) {
	for _, n := range []int{-1, redissync.MaxRouteBuckets + 1} {
		_, err := redissync.New(redissync.Options{Client: newClient(t), Channel: testenv.Channel(t), Routed: true, RouteBuckets: n})(edge.Instance{ID: edge.NewID()})
		if err == nil || !strings.Contains(err.Error(), "RouteBuckets") {
			t.Errorf("RouteBuckets %d: got %v, want an error naming RouteBuckets", n, err)
		}
	}
}

// newSyncHub starts a Hub on sync, closed when t ends.
func newSyncHub(t *testing.T, rs edge.Sync) (*edge.Hub, *testenv.ErrorLog) {
	t.Helper()
	log := testenv.NewErrorLog()
	hub, err := edge.New(edge.Options{Sync: rs, OnError: log.OnError})
	if err != nil {
		t.Fatalf("edge.New: %v", err)
	}
	t.Cleanup(func() { hub.Close() })
	return hub, log
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

// pubsubChannels returns the channels matching pattern that Redis has
// subscribers for, sorted.
func pubsubChannels(t *testing.T, admin *redis.Client, pattern string) []string {
	t.Helper()
	got, err := admin.PubSubChannels(ctxFor(t), pattern).Result()
	if err != nil {
		t.Fatalf("PUBSUB CHANNELS: %v", err)
	}
	slices.Sort(got)
	return got
}

// awaitChannels waits until the channels of pattern with subscribers are
// want.
func awaitChannels(t *testing.T, admin *redis.Client, pattern string, want []string) {
	t.Helper()
	want = slices.Compact(slices.Sorted(slices.Values(want)))
	if want == nil {
		want = []string{}
	}
	deadline := time.Now().Add(waitTimeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		got := pubsubChannels(t, admin, pattern)
		if got == nil {
			got = []string{}
		}
		if slices.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("subscribed channels %q: %q, want %q", pattern, got, want)
		}
		<-tick.C
	}
}

// buckets returns the bucket channels of the topics and of the members' own
// topics.
func buckets(opts redissync.Options, topics []string, members ...*edge.Member) []string {
	var out []string
	for _, topic := range topics {
		out = append(out, redissync.BucketChannel(opts, topic))
	}
	for _, m := range members {
		out = append(out, redissync.BucketChannel(opts, edge.PeerTopicPrefix+m.ID()))
	}
	return out
}

// A topic that is unsubscribed and subscribed again within the linger costs
// no UNSUBSCRIBE and no SUBSCRIBE, and keeps being delivered.
func TestRoutedLingerAbsorbsFlapping(t *testing.T) {
	t.Parallel()
	channel := testenv.Channel(t)
	opts := redissync.Options{Client: newClient(t), Channel: channel, RouteLinger: time.Minute}
	a, _ := newHub(t, redissync.Options{Client: newClient(t), Channel: channel, Routed: true})
	rs, probe := redissync.NewRoutedForTest(opts)
	b, _ := newSyncHub(t, rs)
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
		t.Errorf("flapping sent %d SUBSCRIBE and %d UNSUBSCRIBE of buckets, want none", s-subs, u-unsubs)
	}
	testenv.Publish(t, a, "/ns", "flap", "after flapping")
	got.WaitText(t, "after flapping")
}

// However many topics an instance routes, it holds at most RouteBuckets
// bucket subscriptions, and each topic still reaches its own subscriber
// only.
func TestRoutedBucketsAreBounded(t *testing.T) {
	t.Parallel()
	admin := newClient(t)
	channel := testenv.Channel(t)
	opts := redissync.Options{Client: newClient(t), Channel: channel, Routed: true, RouteBuckets: 8}
	a, _ := newHub(t, opts)
	rs, probe := redissync.NewRoutedForTest(opts)
	b, _ := newSyncHub(t, rs)
	var topics []string
	var sinks []*testenv.Sink
	var members []*edge.Member
	for i := range 200 {
		topic := fmt.Sprint("topic-", i)
		m, s := joinTopics(t, b, "/ns", topic)
		topics, sinks, members = append(topics, topic), append(sinks, s), append(members, m)
	}
	for i, s := range sinks {
		testenv.RelayUntilDelivered(t, a, s, "/ns", topics[i])
	}
	for i, s := range sinks {
		if s.Find(func(d edge.Data) bool {
			text := string(d.Bytes)
			return text != "after recovery" && !strings.HasPrefix(text, "probe-")
		}) {
			t.Errorf("the subscriber of %s received another topic's message", topics[i])
		}
	}
	want := buckets(opts, topics, members...)
	awaitChannels(t, admin, channel+":r:*", want)
	if n := len(pubsubChannels(t, admin, channel+":r:*")); n > 8 {
		t.Errorf("%d bucket channels subscribed, want at most 8", n)
	}
	if n, want := probe.Subscribed(), len(slices.Compact(slices.Sorted(slices.Values(want)))); n != want {
		t.Errorf("the driver holds %d buckets, want %d", n, want)
	}
}

// After peers churn, the subscribed buckets come back to those of the
// topics still subscribed, and to none once every peer has left.
func TestRoutedChurnLeaksNoSubscription(t *testing.T) {
	t.Parallel()
	admin := newClient(t)
	channel := testenv.Channel(t)
	opts := redissync.Options{Client: newClient(t), Channel: channel, Routed: true, RouteLinger: 20 * time.Millisecond}
	rs, probe := redissync.NewRoutedForTest(opts)
	b, _ := newSyncHub(t, rs)
	a, _ := newHub(t, opts)

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

	awaitChannels(t, admin, channel+":r:*", buckets(opts, []string{"stays-1", "stays-2"}, stay))
	stay.Leave()
	awaitChannels(t, admin, channel+":r:*", nil)
	probe.Settle()
	if n := probe.Subscribed(); n != 0 {
		t.Errorf("the driver holds %d buckets after every peer left", n)
	}
}

// After its subscription connection is killed, a routed Hub subscribes every
// bucket it wants again, and delivery resumes on each.
func TestRoutedResubscribeAfterClientKill(t *testing.T) {
	t.Parallel()
	admin := newClient(t)
	channel := testenv.Channel(t)
	opt, err := redis.ParseURL(testenv.RedisURL(t))
	if err != nil {
		t.Fatal(err)
	}
	opt.ClientName = channel + "-b"
	a, _ := newHub(t, redissync.Options{Client: admin, Channel: channel, Routed: true})
	bOpts := redissync.Options{Client: openClient(t, opt), Channel: channel, Routed: true}
	b, bLog := newHub(t, bOpts)
	topics := []string{"k-0", "k-1", "k-2", "k-3", "k-4", "k-5", "k-6", "k-7"}
	m, got := joinTopics(t, b, "/ns", topics...)
	testenv.RelayUntilDelivered(t, a, got, "/ns", "k-0")
	want := buckets(bOpts, topics, m)
	awaitChannels(t, admin, channel+":r:*", want)

	killPubSub(t, admin, opt.ClientName)
	t.Logf("reported: %v", bLog.Await(t, edge.StageSubscribe, 0, waitTimeout))
	members := []*edge.Member{m}
	for _, topic := range topics {
		n, s := joinTopics(t, b, "/ns", topic) // a sink with nothing yet
		testenv.RelayUntilDelivered(t, a, s, "/ns", topic)
		members = append(members, n)
	}
	awaitChannels(t, admin, channel+":r:*", buckets(bOpts, topics, members...))
	if errs := bLog.Errors(edge.StageSubscribe); len(errs) != 1 {
		t.Errorf("reported at StageSubscribe %d times, want once: %v", len(errs), errs)
	}
}

// pubsubConn returns the id and subscription count of the one pub/sub
// connection named name, or ok false when there is not exactly one.
func pubsubConn(t *testing.T, admin *redis.Client, name string) (id, subs string, ok bool) {
	t.Helper()
	list, err := admin.ClientList(ctxFor(t)).Result()
	if err != nil {
		t.Fatalf("CLIENT LIST: %v", err)
	}
	n := 0
	for line := range strings.Lines(list) {
		fields := strings.Fields(line)
		if !slices.Contains(fields, "name="+name) {
			continue
		}
		var s string
		for _, f := range fields {
			if v, ok := strings.CutPrefix(f, "id="); ok {
				id = v
			}
			if v, ok := strings.CutPrefix(f, "sub="); ok {
				s = v
			}
		}
		if s != "0" {
			n++
			subs = s
		}
	}
	return id, subs, n == 1
}

// A routed subscription that the liveness check replaces (its probes do not
// come back) is replaced by one subscribed to every wanted bucket.
func TestRoutedReplacedSubscriptionKeepsBuckets(t *testing.T) {
	t.Parallel()
	admin := newClient(t)
	channel := testenv.Channel(t)
	opt, err := redis.ParseURL(testenv.RedisURL(t))
	if err != nil {
		t.Fatal(err)
	}
	opt.ClientName = channel + "-b"
	client := &probeDropper{UniversalClient: openClient(t, opt)}
	a, _ := newHub(t, redissync.Options{Client: admin, Channel: channel, Routed: true})
	b, bLog := newSyncHub(t, redissync.NewWithProbeTiming(redissync.Options{Client: client, Channel: channel, Routed: true},
		50*time.Millisecond, 500*time.Millisecond))
	topics := []string{"r-0", "r-1", "r-2"}
	m, got := joinTopics(t, b, "/ns", topics...)
	testenv.RelayUntilDelivered(t, a, got, "/ns", "r-0")
	want := buckets(redissync.Options{Channel: channel}, topics, m)
	awaitChannels(t, admin, channel+":r:*", want)
	oldID, subs, ok := pubsubConn(t, admin, opt.ClientName)
	if !ok {
		t.Fatal("no pub/sub connection of B's")
	}

	client.drop.Store(true)
	bLog.Await(t, edge.StageSubscribe, 0, waitTimeout)
	client.drop.Store(false)
	// The new connection holds as many subscriptions as the old one.
	deadline := time.Now().Add(waitTimeout)
	tick := time.NewTicker(10 * time.Millisecond) // polling CLIENT LIST
	defer tick.Stop()
	for {
		id, s, ok := pubsubConn(t, admin, opt.ClientName)
		if ok && id != oldID && s == subs {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new subscription with %s channels: id %s, %s channels", subs, id, s)
		}
		<-tick.C
	}
	for _, topic := range topics {
		_, s := joinTopics(t, b, "/ns", topic)
		testenv.RelayUntilDelivered(t, a, s, "/ns", topic)
	}
}
