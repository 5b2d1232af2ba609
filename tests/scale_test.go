package tests

import (
	"context"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"

	"github.com/edgesync/edgesync/drivers/memsync"
	"github.com/edgesync/edgesync/drivers/natssync"
	"github.com/edgesync/edgesync/drivers/pgsync"
	"github.com/edgesync/edgesync/drivers/redissync"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/internal/testenv"
)

// The scale setup of issue 9: 8 hub instances and 1,000 topics, each topic
// subscribed on 2 instances and published by a third.
const (
	scaleInstances = 8
	scaleTopics    = 1000
	scaleNamespace = "/scale"
	scaleTimeout   = 30 * time.Second // bounds each wait; a working run never meets it
)

// scaleTopic is the name of topic k.
func scaleTopic(k int) string { return "topic-" + strconv.Itoa(k) }

// scaleSubscribers returns the two instances that subscribe to topic k.
func scaleSubscribers(k int) [2]int {
	return [2]int{k % scaleInstances, (k + 1) % scaleInstances}
}

// scalePublisher returns the instance that publishes to topic k, which does
// not subscribe to it.
func scalePublisher(k int) int { return (k + scaleInstances/2) % scaleInstances }

// scaleBackend builds the Syncs of one cluster of scaleInstances on a
// backplane.
type scaleBackend struct {
	name string
	// syncs returns the Sync of each instance of a cluster on a channel
	// of its own, broadcast or routed.
	syncs func(tb testing.TB, routed bool) []edge.Sync
	// echo: an instance reads its own messages back off the backplane
	// (and drops them).
	echo bool
	// probes is how many liveness probes an instance reads per second at
	// most, in broadcast and routed mode (every instance's on the channel,
	// or its own on a channel of its own).
	probes, routedProbes int
	// buckets, when not 0, is the number of buckets topics are hashed
	// into in routed mode (FNV-1a, 32 bits, modulo buckets, as redissync
	// and pgsync document): an instance reads every message of the
	// buckets of its topics. 0: it reads its own topics only.
	buckets int
}

// bucketOf returns the bucket of topic.
func (b scaleBackend) bucketOf(topic string) int {
	h := fnv.New32a()
	h.Write([]byte(topic))
	return int(h.Sum32() % uint32(b.buckets))
}

func scaleBackends() []scaleBackend {
	return []scaleBackend{
		{
			name: "memsync",
			syncs: func(tb testing.TB, routed bool) []edge.Sync {
				bus, channel := new(memsync.Bus), testenv.Channel(tb)
				return repeatSync(func(int) edge.Sync {
					return memsync.New(memsync.Options{Bus: bus, Channel: channel, Routed: routed})
				})
			},
		},
		{
			name: "redis", echo: true, probes: scaleInstances, routedProbes: 1, buckets: redissync.DefaultRouteBuckets,
			syncs: func(tb testing.TB, routed bool) []edge.Sync {
				opts, err := redis.ParseURL(testenv.RedisURL(tb))
				if err != nil {
					tb.Fatal(err)
				}
				opts.PoolSize = 4 * scaleInstances
				client := redis.NewClient(opts)
				tb.Cleanup(func() { client.Close() })
				channel := testenv.Channel(tb)
				return repeatSync(func(int) edge.Sync {
					return redissync.New(redissync.Options{Client: client, Channel: channel, Routed: routed})
				})
			},
		},
		{
			name: "postgres", echo: true, probes: scaleInstances, routedProbes: 1, buckets: pgsync.DefaultRouteBuckets,
			syncs: func(tb testing.TB, routed bool) []edge.Sync {
				pool, err := pgxpool.New(context.Background(), testenv.PostgresURL(tb))
				if err != nil {
					tb.Fatal(err)
				}
				tb.Cleanup(pool.Close)
				channel := testenv.Channel(tb)
				return repeatSync(func(int) edge.Sync {
					return pgsync.New(pgsync.Options{Pool: pool, Channel: channel, Routed: routed})
				})
			},
		},
		{
			name: "nats",
			syncs: func(tb testing.TB, routed bool) []edge.Sync {
				url := testenv.NATSURL(tb)
				channel := testenv.Channel(tb)
				return repeatSync(func(int) edge.Sync {
					nc, err := nats.Connect(url, nats.NoEcho())
					if err != nil {
						tb.Fatalf("nats.Connect: %v", err)
					}
					tb.Cleanup(nc.Close)
					return natssync.New(natssync.Options{Conn: nc, Channel: channel, Routed: routed})
				})
			},
		},
	}
}

func repeatSync(f func(i int) edge.Sync) []edge.Sync {
	syncs := make([]edge.Sync, scaleInstances)
	for i := range syncs {
		syncs[i] = f(i)
	}
	return syncs
}

// scaleEndpoint is the one member of an instance, subscribed to all its
// topics. It counts what it is delivered, by topic: bodies are "p <topic>
// <n>" for the probes that wait for the routes and "m <topic> <round>" for
// measured messages.
type scaleEndpoint struct {
	mu         sync.Mutex
	deliveries int
	probes     map[int]int // by topic
	measured   map[int]int // by topic
	total      int         // measured messages, every topic
	bad        []string    // bodies of topics it does not subscribe to, or unparsable
	own        map[int]bool
	notify     chan struct{} // the cluster's, signalled after a delivery
}

func newScaleEndpoint(own map[int]bool, notify chan struct{}) *scaleEndpoint {
	return &scaleEndpoint{probes: map[int]int{}, measured: map[int]int{}, own: own, notify: notify}
}

// Deliver implements edge.Endpoint.
func (e *scaleEndpoint) Deliver(d edge.Data) {
	kind, rest, _ := strings.Cut(string(d.Bytes), " ")
	ks, _, _ := strings.Cut(rest, " ")
	k, err := strconv.Atoi(ks)
	e.mu.Lock()
	e.deliveries++
	switch {
	case err != nil || !e.own[k]:
		e.bad = append(e.bad, string(d.Bytes))
	case kind == "p":
		e.probes[k]++
	case kind == "m":
		e.measured[k]++
		e.total++
	default:
		e.bad = append(e.bad, string(d.Bytes))
	}
	e.mu.Unlock()
	select {
	case e.notify <- struct{}{}:
	default:
	}
}

// Close implements edge.Endpoint.
func (e *scaleEndpoint) Close(int, string) error { return nil }

// scaleCluster is the scale setup running on one backend in one mode.
type scaleCluster struct {
	backend scaleBackend
	routed  bool
	hubs    []*edge.Hub
	logs    []*testenv.ErrorLog
	eps     []*scaleEndpoint
	topics  [][]int // each instance's topics
	probes  []int   // probes published, by topic
	rounds  int     // measured rounds published
	notify  chan struct{}
}

// newScaleCluster starts the instances, joins each one's member to its
// topics and waits until every topic reaches both its subscribers.
func newScaleCluster(tb testing.TB, backend scaleBackend, routed bool) *scaleCluster {
	tb.Helper()
	c := &scaleCluster{backend: backend, routed: routed, topics: make([][]int, scaleInstances), probes: make([]int, scaleTopics), notify: make(chan struct{}, 1)}
	for k := range scaleTopics {
		for _, i := range scaleSubscribers(k) {
			c.topics[i] = append(c.topics[i], k)
		}
	}
	for i, s := range backend.syncs(tb, routed) {
		log := testenv.NewErrorLog()
		hub, err := edge.New(edge.Options{Sync: s, OnError: log.OnError, QueueSize: 4 * scaleTopics})
		if err != nil {
			tb.Fatalf("edge.New: %v", err)
		}
		tb.Cleanup(func() { hub.Close() })
		own := map[int]bool{}
		for _, k := range c.topics[i] {
			own[k] = true
		}
		ep := newScaleEndpoint(own, c.notify)
		m, err := hub.Join(edge.NewID(), scaleNamespace, ep)
		if err != nil {
			tb.Fatalf("Join: %v", err)
		}
		for _, k := range c.topics[i] {
			if err := m.Subscribe(scaleTopic(k)); err != nil {
				tb.Fatalf("Subscribe: %v", err)
			}
		}
		c.hubs, c.logs, c.eps = append(c.hubs, hub), append(c.logs, log), append(c.eps, ep)
	}
	c.awaitRoutes(tb)
	return c
}

// publish publishes body to topic k from its publisher.
func (c *scaleCluster) publish(tb testing.TB, k int, body string) {
	msg := edge.Message{Namespace: scaleNamespace, Topic: scaleTopic(k), Data: edge.Text(body)}
	if err := c.hubs[scalePublisher(k)].Publish(context.Background(), msg); err != nil {
		tb.Fatalf("Publish: %v", err)
	}
}

// awaitRoutes publishes a probe to every topic that has not reached both
// its subscribers yet, and again, until every topic has: routes are set up
// in the background, so a probe published before its route is lost.
func (c *scaleCluster) awaitRoutes(tb testing.TB) {
	tb.Helper()
	deadline := time.Now().Add(scaleTimeout)
	for {
		var missing []int
		for k := range scaleTopics {
			for _, i := range scaleSubscribers(k) {
				if c.eps[i].count(func(e *scaleEndpoint) int { return e.probes[k] }) == 0 {
					missing = append(missing, k)
					break
				}
			}
		}
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%d topics never reached both their subscribers within %v, among them %d", len(missing), scaleTimeout, missing[0])
		}
		for _, k := range missing {
			c.publish(tb, k, fmt.Sprintf("p %d %d", k, c.probes[k]))
			c.probes[k]++
		}
		// Give this round of probes a moment to arrive before the next:
		// a wait for progress, bounded so that lost probes are sent
		// again.
		c.flush(tb)
		c.waitAny(100 * time.Millisecond)
	}
}

// flush waits until every hub has handed what it published to its driver.
func (c *scaleCluster) flush(tb testing.TB) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), scaleTimeout)
	defer cancel()
	for _, h := range c.hubs {
		if err := h.Flush(ctx); err != nil {
			tb.Fatalf("Flush: %v", err)
		}
	}
}

// waitAny waits until some endpoint has been delivered something, or d.
func (c *scaleCluster) waitAny(d time.Duration) {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-c.notify:
	case <-timer.C:
	}
}

func (e *scaleEndpoint) count(f func(e *scaleEndpoint) int) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return f(e)
}

// publishRound publishes one measured message to every topic.
func (c *scaleCluster) publishRound(tb testing.TB) {
	for k := range scaleTopics {
		c.publish(tb, k, fmt.Sprintf("m %d %d", k, c.rounds))
	}
	c.rounds++
}

// awaitMeasured waits until every endpoint has every measured message of its
// topics.
func (c *scaleCluster) awaitMeasured(tb testing.TB) {
	tb.Helper()
	for i, e := range c.eps {
		want := len(c.topics[i]) * c.rounds
		c.await(tb, fmt.Sprintf("instance %d to receive %d measured messages", i, want), func() bool {
			return e.count(func(e *scaleEndpoint) int { return e.total }) >= want
		})
	}
}

// await polls ok, after every delivery and at least every 10ms, until it
// holds, failing tb after scaleTimeout.
func (c *scaleCluster) await(tb testing.TB, what string, ok func() bool) {
	tb.Helper()
	deadline := time.Now().Add(scaleTimeout)
	for !ok() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for %s", scaleTimeout, what)
		}
		c.waitAny(10 * time.Millisecond)
	}
}

// awaitHanded waits until what each instance's driver has handed its Hub
// (Stats.Received) is, broadcast, every message the others published,
// probes included, and routed, what its member was delivered, nothing else:
// in either mode, nothing more than that is ever handed.
func (c *scaleCluster) awaitHanded(tb testing.TB) {
	tb.Helper()
	published := make([]int, scaleInstances)
	for k := range scaleTopics {
		published[scalePublisher(k)] += c.probes[k] + c.rounds
	}
	all := 0
	for _, n := range published {
		all += n
	}
	for i, h := range c.hubs {
		e := c.eps[i]
		want := func() int { return all - published[i] }
		if c.routed {
			want = func() int { return e.count(func(e *scaleEndpoint) int { return e.deliveries }) }
		}
		c.await(tb, fmt.Sprintf("instance %d's Stats.Received to settle", i), func() bool {
			return h.Stats().Received == uint64(want())
		})
	}
}

// readTopics returns the topics whose messages instance i's driver reads
// off the backplane: in broadcast mode every topic (but those it publishes,
// unless the backplane echoes); routed, its own topics, and the topics that
// share their buckets when the backplane hashes topics into buckets (its own
// published ones among them, when it echoes).
func (c *scaleCluster) readTopics(i int) []int {
	var buckets map[int]bool
	if c.routed && c.backend.buckets > 0 {
		buckets = map[int]bool{}
		for _, k := range c.topics[i] {
			buckets[c.backend.bucketOf(scaleTopic(k))] = true
		}
	}
	own := c.eps[i].own
	var topics []int
	for k := range scaleTopics {
		if scalePublisher(k) == i && !c.backend.echo {
			continue
		}
		switch {
		case !c.routed,
			buckets != nil && buckets[c.backend.bucketOf(scaleTopic(k))],
			buckets == nil && own[k]:
			topics = append(topics, k)
		}
	}
	return topics
}

// TestScaleRoutedReceivesOwnTopicsOnly runs the scale setup on every backend,
// broadcast and routed, and checks what each instance receives from the
// backplane, as its Stats count it. Broadcast, the driver hands the Hub
// every message of the cluster; routed, only those of the instance's own
// topics (Stats.Received). What the driver reads off the backplane
// (Stats.BackplaneMessages) is, broadcast, every message of the cluster,
// and routed, its own topics' and, on Redis and Postgres, those of the other
// topics of their hash buckets, which the driver drops: the count is
// computed from the bucket function, and may exceed it only by the liveness
// probes of Redis and Postgres and, routed, by the probes that waited for
// the routes.
func TestScaleRoutedReceivesOwnTopicsOnly(t *testing.T) {
	const rounds = 3
	for _, backend := range scaleBackends() {
		t.Run(backend.name, func(t *testing.T) {
			for _, routed := range []bool{false, true} {
				mode := "broadcast"
				if routed {
					mode = "routed"
				}
				t.Run(mode, func(t *testing.T) {
					testScale(t, backend, routed, rounds)
				})
			}
		})
	}
}

func testScale(t *testing.T, backend scaleBackend, routed bool, rounds int) {
	began := time.Now()
	c := newScaleCluster(t, backend, routed)
	// Broadcast, every message ever published reaches every instance, so
	// the counters are checked over the cluster's life. Routed, probes
	// published before their route was in place never arrive: the
	// counters are checked over the measured rounds.
	before := make([]edge.Stats, scaleInstances)
	if routed {
		for i, h := range c.hubs {
			before[i] = h.Stats()
		}
	}
	for range rounds {
		c.publishRound(t)
	}
	c.flush(t)
	c.awaitMeasured(t)

	c.awaitHanded(t)
	var reads, bytes []uint64
	for i, h := range c.hubs {
		e := c.eps[i]
		e.mu.Lock()
		if len(e.bad) > 0 {
			t.Errorf("instance %d was delivered %d messages of topics it does not subscribe to: %q", i, len(e.bad), e.bad[:min(5, len(e.bad))])
		}
		for _, k := range c.topics[i] {
			if e.measured[k] != rounds {
				t.Errorf("instance %d received %d measured messages of topic %d, want %d", i, e.measured[k], k, rounds)
			}
		}
		e.mu.Unlock()

		// What the driver read off the backplane: the messages of the
		// topics it reads, and liveness probes. Routed, the probes of
		// those topics may arrive during the measured rounds too.
		probes := backend.probes
		wantReads, slack := 0, 0
		for _, k := range c.readTopics(i) {
			if routed {
				wantReads += rounds
				slack += c.probes[k]
			} else {
				wantReads += rounds + c.probes[k]
			}
		}
		if routed {
			probes = backend.routedProbes
		}
		// Messages from other publishers may still be on their way:
		// wait until the count is reached.
		c.await(t, fmt.Sprintf("instance %d to read %d payloads off the backplane", i, wantReads), func() bool {
			return h.Stats().BackplaneMessages-before[i].BackplaneMessages >= uint64(wantReads)
		})
		slack += probes * (int(time.Since(began).Seconds()) + 2)
		st := h.Stats()
		gotReads := st.BackplaneMessages - before[i].BackplaneMessages
		reads, bytes = append(reads, gotReads), append(bytes, st.BackplaneBytes-before[i].BackplaneBytes)
		if gotReads < uint64(wantReads) || gotReads > uint64(wantReads+slack) {
			t.Errorf("instance %d read %d payloads off the backplane, want %d (and at most %d more: probes)", i, gotReads, wantReads, slack)
		}
		if st.BackplaneBytes-before[i].BackplaneBytes < gotReads*uint64(len("m 0 0")) {
			t.Errorf("instance %d read %d bytes in %d payloads: fewer than their bodies", i, st.BackplaneBytes-before[i].BackplaneBytes, gotReads)
		}
		for _, stage := range []edge.Stage{edge.StageSubscribe, edge.StagePublish, edge.StageDelivery} {
			if errs := c.logs[i].Errors(stage); len(errs) > 0 {
				t.Errorf("instance %d reported at %s: %v", i, stage, errs)
			}
		}
	}
	span := "the cluster's life, probes included"
	if routed {
		span = "the measured rounds"
	}
	t.Logf("%d rounds of %d messages; read off the backplane by each instance over %s: payloads %v, bytes %v",
		rounds, scaleTopics, span, reads, bytes)
}
