package redissync_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/edgesync/edgesync/drivers/drivertest"
	"github.com/edgesync/edgesync/drivers/redissync"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/internal/testenv"
)

// newClusterClient returns a client of the Redis Cluster at addrs, closed
// when t ends.
func newClusterClient(t testing.TB, addrs []string, name string) *redis.ClusterClient {
	t.Helper()
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs, ClientName: name, ContextTimeoutEnabled: true})
	t.Cleanup(func() { c.Close() })
	return c
}

func TestClusterDriverConformance(t *testing.T) {
	client := newClusterClient(t, testenv.RedisCluster(t), "")
	drivertest.RunDriverTests(t, func(tb testing.TB, channel string) edge.Sync {
		return redissync.New(redissync.Options{Client: client, Channel: channel})
	})
}

func TestClusterRoutedDriverConformance(t *testing.T) {
	client := newClusterClient(t, testenv.RedisCluster(t), "")
	drivertest.RunRoutedDriverTests(t, func(tb testing.TB, channel string) edge.Sync {
		return redissync.New(redissync.Options{Client: client, Channel: channel, Routed: true})
	})
}

func TestClusterRegistryConformance(t *testing.T) {
	client := newClusterClient(t, testenv.RedisCluster(t), "")
	drivertest.RunRegistryTests(t, func(tb testing.TB) edge.Registry {
		return newRegistry(tb, client, testenv.Channel(tb))
	})
}

// nodeClient returns a client of the one node at addr, closed when t ends.
func nodeClient(t testing.TB, addr string) *redis.Client {
	t.Helper()
	return openClient(t, &redis.Options{Addr: addr})
}

// masters returns the address of every master of the cluster, sorted.
func masters(t testing.TB, cc *redis.ClusterClient) []string {
	t.Helper()
	var out []string
	shards, err := cc.ClusterShards(ctxFor(t)).Result()
	if err != nil {
		t.Fatalf("CLUSTER SHARDS: %v", err)
	}
	for _, s := range shards {
		for _, n := range s.Nodes {
			if n.Role == "master" && n.Health == "online" {
				out = append(out, fmt.Sprintf("%s:%d", n.IP, n.Port))
			}
		}
	}
	slices.Sort(out)
	return out
}

// shardSubscribers returns the number of subscribers of the sharded channel
// ch on each master.
func shardSubscribers(t testing.TB, cc *redis.ClusterClient, ch string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	for _, addr := range masters(t, cc) {
		n, err := nodeClient(t, addr).PubSubShardNumSub(ctxFor(t), ch).Result()
		if err != nil {
			t.Fatalf("PUBSUB SHARDNUMSUB on %s: %v", addr, err)
		}
		out[addr] = n[ch]
	}
	return out
}

// owner returns the address of the master of ch's slot.
func owner(t testing.TB, cc *redis.ClusterClient, ch string) string {
	t.Helper()
	m, err := cc.MasterForKey(ctxFor(t), ch)
	if err != nil {
		t.Fatalf("MasterForKey(%q): %v", ch, err)
	}
	return m.Options().Addr
}

// In broadcast on a cluster, the channel is one sharded channel: both
// instances subscribe it on the master of its slot only, and what they
// relay never reaches the other masters, not even their plain SUBSCRIBE
// listeners, which a PUBLISH would reach.
func TestClusterMessageTravelsToOneShard(t *testing.T) {
	t.Parallel()
	addrs := testenv.RedisCluster(t)
	cc := newClusterClient(t, addrs, "")
	channel := testenv.Channel(t)
	a, aLog := newHub(t, redissync.Options{Client: newClusterClient(t, addrs, ""), Channel: channel})
	b, bLog := newHub(t, redissync.Options{Client: newClusterClient(t, addrs, ""), Channel: channel})
	got := testenv.Join(t, b, "/ns", "t")

	// A listener of plain pub/sub on every master.
	var listeners []*redis.PubSub
	for _, addr := range masters(t, cc) {
		ps := nodeClient(t, addr).Subscribe(ctxFor(t), channel)
		t.Cleanup(func() { ps.Close() })
		if _, err := ps.Receive(ctxFor(t)); err != nil {
			t.Fatalf("SUBSCRIBE on %s: %v", addr, err)
		}
		listeners = append(listeners, ps)
	}
	testenv.RelayUntilDelivered(t, a, got, "/ns", "t")
	for i := range 100 {
		testenv.Publish(t, a, "/ns", "t", fmt.Sprint("m-", i))
	}
	got.WaitText(t, "m-99")

	home := owner(t, cc, channel)
	for addr, n := range shardSubscribers(t, cc, channel) {
		want := int64(0)
		if addr == home {
			want = 2
		}
		if n != want {
			t.Errorf("%d subscribers of %q on %s, want %d (the master of its slot is %s)", n, channel, addr, want, home)
		}
	}
	for _, ps := range listeners {
		if v, err := ps.ReceiveTimeout(ctxFor(t), 100*time.Millisecond); err == nil {
			t.Errorf("a plain SUBSCRIBE listener received %v", v)
		}
	}
	for _, l := range []*testenv.ErrorLog{aLog, bLog} {
		if l.Count(edge.StageSubscribe)+l.Count(edge.StageDelivery)+l.Count(edge.StagePublish) > 0 {
			t.Errorf("reported: %v", l)
		}
	}
}

// shardChannels returns the sharded channels matching pattern that have
// subscribers on the node at addr.
func shardChannels(t testing.TB, addr, pattern string) []string {
	t.Helper()
	got, err := nodeClient(t, addr).PubSubShardChannels(ctxFor(t), pattern).Result()
	if err != nil {
		t.Fatalf("PUBSUB SHARDCHANNELS on %s: %v", addr, err)
	}
	slices.Sort(got)
	return got
}

// shardConns returns the ids of the connections named name that hold
// sharded subscriptions on the node at addr.
func shardConns(t testing.TB, addr, name string) []string {
	t.Helper()
	list, err := nodeClient(t, addr).ClientList(ctxFor(t)).Result()
	if err != nil {
		t.Fatalf("CLIENT LIST on %s: %v", addr, err)
	}
	var ids []string
	for line := range strings.Lines(list) {
		fields := strings.Fields(line)
		if !slices.Contains(fields, "name="+name) || slices.Contains(fields, "ssub=0") {
			continue
		}
		for _, f := range fields {
			if id, ok := strings.CutPrefix(f, "id="); ok {
				ids = append(ids, id)
			}
		}
	}
	return ids
}

// In a routed cluster, the bucket channels spread over the masters: each
// is subscribed on the master of its slot, and the instance holds one
// subscription connection per master.
func TestClusterRoutedBucketsSpreadOverShards(t *testing.T) {
	t.Parallel()
	addrs := testenv.RedisCluster(t)
	cc := newClusterClient(t, addrs, "")
	channel := testenv.Channel(t)
	opts := redissync.Options{Channel: channel, Routed: true, RouteBuckets: 64}
	aOpts, bOpts := opts, opts
	aOpts.Client = newClusterClient(t, addrs, "")
	bOpts.Client = newClusterClient(t, addrs, channel+"-b")
	a, _ := newHub(t, aOpts)
	b, bLog := newHub(t, bOpts)
	var topics []string
	var sinks []*testenv.Sink
	var members []*edge.Member
	for i := range 40 {
		topic := fmt.Sprint("topic-", i)
		m, s := joinTopics(t, b, "/ns", topic)
		topics, sinks, members = append(topics, topic), append(sinks, s), append(members, m)
	}
	for i, s := range sinks {
		testenv.RelayUntilDelivered(t, a, s, "/ns", topics[i])
	}
	want := map[string][]string{}
	for _, ch := range slices.Compact(slices.Sorted(slices.Values(buckets(opts, topics, members...)))) {
		home := owner(t, cc, ch)
		want[home] = append(want[home], ch)
	}
	ms := masters(t, cc)
	if len(want) != len(ms) {
		t.Fatalf("the buckets of the test lie on %d masters of %d: pick other topics", len(want), len(ms))
	}
	for _, addr := range ms {
		deadline := time.Now().Add(waitTimeout)
		for {
			got := shardChannels(t, addr, channel+":r:*")
			if slices.Equal(got, want[addr]) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("bucket channels subscribed on %s: %q, want %q", addr, got, want[addr])
			}
			time.Sleep(10 * time.Millisecond) // polling PUBSUB SHARDCHANNELS
		}
		if ids := shardConns(t, addr, channel+"-b"); len(ids) != 1 {
			t.Errorf("B holds %d subscription connections on %s, want 1", len(ids), addr)
		}
	}
	if errs := bLog.Errors(edge.StageSubscribe); len(errs) > 0 {
		t.Errorf("reported at StageSubscribe: %v", errs)
	}
}

// When a master is killed while messages flow, its replica is promoted, the
// instances report the outage once at StageSubscribe, and delivery resumes
// for every topic, on every shard; Close does not hang.
func TestClusterFailover(t *testing.T) {
	for _, routed := range []bool{false, true} {
		t.Run(fmt.Sprint("routed=", routed), func(t *testing.T) {
			t.Parallel()
			cluster := testenv.StartRedisCluster(t)
			addrs := cluster.Addrs()
			cc := newClusterClient(t, addrs, "")
			channel := testenv.Channel(t)
			opts := redissync.Options{Channel: channel, Routed: routed, RouteBuckets: 64}
			aOpts, bOpts := opts, opts
			aOpts.Client = newClusterClient(t, addrs, "")
			bOpts.Client = newClusterClient(t, addrs, "")
			a, _ := newHub(t, aOpts)
			b, bLog := newHub(t, bOpts)

			// Topics whose buckets lie on every master, each streamed.
			var topics []string
			var sinks []*testenv.Sink
			on := map[string]bool{}
			for i := 0; len(on) < 3 || len(topics) < 6; i++ {
				if i > 1000 {
					t.Fatal("no topics on every master")
				}
				topic := fmt.Sprint("f-", i)
				home := owner(t, cc, redissync.BucketChannel(opts, topic))
				if routed && on[home] && len(on) < 3 {
					continue
				}
				on[home] = true
				topics = append(topics, topic)
				sinks = append(sinks, testenv.Join(t, b, "/ns", topic))
			}
			for i, s := range sinks {
				testenv.RelayUntilDelivered(t, a, s, "/ns", topics[i])
				testenv.Stream(t, a, "/ns", topics[i])
			}

			victim := owner(t, cc, channel)
			if routed {
				victim = owner(t, cc, redissync.BucketChannel(opts, topics[0]))
			}
			replica := cluster.KillMaster(t, victim)
			t.Logf("killed %s; reported: %v", victim, bLog.Await(t, edge.StageSubscribe, 0, testenv.RedisClusterTimeout))
			cluster.AwaitPromoted(t, replica)
			for i := range topics {
				testenv.RelayUntilDelivered(t, a, testenv.Join(t, b, "/ns", topics[i]), "/ns", topics[i])
			}
			if errs := bLog.Errors(edge.StageSubscribe); len(errs) != 1 {
				t.Errorf("reported at StageSubscribe %d times, want once for the outage: %v", len(errs), errs)
			}
			if errs := bLog.Errors(edge.StageDelivery); len(errs) > 0 {
				t.Errorf("reported at StageDelivery: %v", errs)
			}
			done := make(chan struct{})
			go func() { b.Close(); a.Close(); close(done) }()
			select {
			case <-done:
			case <-time.After(waitTimeout):
				t.Fatal("closing the hubs hangs")
			}
		})
	}
}

// The Registry's keys of one channel share a hash tag, so its scripts and
// transactions run on one slot of the cluster: a connection added through
// the cluster is found, with its topics and subscribers.
func TestClusterRegistryKeysShareASlot(t *testing.T) {
	t.Parallel()
	addrs := testenv.RedisCluster(t)
	cc := newClusterClient(t, addrs, "")
	channel := testenv.Channel(t)
	reg := newRegistry(t, cc, channel)
	ctx := ctxFor(t)
	for i := range 20 {
		id := fmt.Sprint("c-", i)
		if err := reg.Add(ctx, edge.Conn{ID: id, Namespace: fmt.Sprint("/ns-", i%3)}); err != nil {
			t.Fatalf("Add: %v", err)
		}
		if err := reg.Subscribe(ctx, id, fmt.Sprint("t-", i%4)); err != nil {
			t.Fatalf("Subscribe: %v", err)
		}
	}
	var keys []string
	for _, addr := range masters(t, cc) {
		k, err := nodeClient(t, addr).Keys(ctx, "edgesync:{"+channel+"}:*").Result()
		if err != nil {
			t.Fatal(err)
		}
		if len(k) > 0 && len(keys) > 0 {
			t.Errorf("keys of one channel on two masters")
		}
		keys = append(keys, k...)
	}
	slots := map[int64]bool{}
	for _, k := range keys {
		s, err := cc.ClusterKeySlot(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		slots[s] = true
	}
	if len(keys) == 0 || len(slots) != 1 {
		t.Errorf("%d keys in %d slots, want them all in one", len(keys), len(slots))
	}
	n := 0
	if err := reg.Subscribers(ctx, "", "t-0", func(string) bool { n++; return true }); err != nil {
		t.Fatal(err)
	}
	if n != 5 {
		t.Errorf("%d subscribers of t-0, want 5", n)
	}
}

// When the slot of a bucket moves to another master, the server unsubscribes
// the bucket (SUNSUBSCRIBE), and the instance subscribes it again on the new
// master: delivery resumes on it, and goes on for a topic of the old master
// that stayed, on the same connection, with the outage reported once.
func TestClusterSlotMove(t *testing.T) {
	t.Parallel()
	cluster := testenv.StartRedisCluster(t)
	addrs := cluster.Addrs()
	cc := newClusterClient(t, addrs, "")
	channel := testenv.Channel(t)
	opts := redissync.Options{Channel: channel, Routed: true, RouteBuckets: 64}
	aOpts, bOpts := opts, opts
	aOpts.Client = newClusterClient(t, addrs, "")
	bOpts.Client = newClusterClient(t, addrs, channel+"-b")
	a, _ := newHub(t, aOpts)
	b, bLog := newHub(t, bOpts)

	// Two topics whose buckets lie on one master, in different slots.
	moving := "m-0"
	movingCh := redissync.BucketChannel(opts, moving)
	source := owner(t, cc, movingCh)
	staying := ""
	for i := 1; staying == ""; i++ {
		if i > 1000 {
			t.Fatal("no second topic on the master")
		}
		topic := fmt.Sprint("m-", i)
		ch := redissync.BucketChannel(opts, topic)
		if ch != movingCh && owner(t, cc, ch) == source {
			staying = topic
		}
	}
	for _, topic := range []string{moving, staying} {
		testenv.RelayUntilDelivered(t, a, testenv.Join(t, b, "/ns", topic), "/ns", topic)
	}

	conns := shardConns(t, source, channel+"-b")
	if len(conns) != 1 {
		t.Fatalf("B holds %d subscription connections on %s, want 1", len(conns), source)
	}
	ctx := ctxFor(t)
	slot, err := cc.ClusterKeySlot(ctx, movingCh).Result()
	if err != nil {
		t.Fatal(err)
	}
	var target string
	for _, m := range masters(t, cc) {
		if m != source {
			target = m
			break
		}
	}
	src, dst := nodeClient(t, source), nodeClient(t, target)
	srcID, err := src.ClusterMyID(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	dstID, err := dst.ClusterMyID(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	// The steps of redis-cli --cluster reshard, for a slot without keys.
	for _, step := range []struct {
		node *redis.Client
		args []any
	}{
		{dst, []any{"cluster", "setslot", slot, "importing", srcID}},
		{src, []any{"cluster", "setslot", slot, "migrating", dstID}},
		{dst, []any{"cluster", "setslot", slot, "node", dstID}},
		{src, []any{"cluster", "setslot", slot, "node", dstID}},
	} {
		if err := step.node.Do(ctx, step.args...).Err(); err != nil {
			t.Fatalf("%v: %v", step.args, err)
		}
	}
	t.Logf("moved slot %d of %s from %s to %s; reported: %v", slot, movingCh, source, target,
		bLog.Await(t, edge.StageSubscribe, 0, waitTimeout))
	for _, topic := range []string{moving, staying} {
		testenv.RelayUntilDelivered(t, a, testenv.Join(t, b, "/ns", topic), "/ns", topic)
	}
	deadline := time.Now().Add(waitTimeout)
	for {
		if n := shardSubscribers(t, cc, movingCh)[target]; n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s is not subscribed on its new master %s: %v", movingCh, target, shardSubscribers(t, cc, movingCh))
		}
		time.Sleep(10 * time.Millisecond) // polling PUBSUB SHARDNUMSUB
	}
	if errs := bLog.Errors(edge.StageSubscribe); len(errs) != 1 {
		t.Errorf("reported at StageSubscribe %d times, want once for the outage: %v", len(errs), errs)
	}
	if got := shardConns(t, source, channel+"-b"); !slices.Equal(got, conns) {
		t.Errorf("B's subscription connections on %s were %v, are %v: the staying bucket's was replaced", source, conns, got)
	}
}

// A Hub on a Redis Cluster that does not answer reports the failed
// subscription once, keeps trying without another report, and closes at
// once.
func TestClusterUnreachable(t *testing.T) {
	t.Parallel()
	for _, routed := range []bool{false, true} {
		client := newClusterClient(t, []string{"127.0.0.1:1"}, "")
		hub, log := newHub(t, redissync.Options{Client: client, Channel: testenv.Channel(t), Routed: routed})
		_ = testenv.Join(t, hub, "/ns", "t")
		err := log.Await(t, edge.StageSubscribe, 0, waitTimeout)
		if !strings.Contains(err.Error(), "redissync") {
			t.Errorf("routed %v: reported %v, want the driver's error", routed, err)
		}
		done := make(chan struct{})
		go func() { hub.Close(); close(done) }()
		select {
		case <-done:
		case <-time.After(waitTimeout):
			t.Fatalf("routed %v: closing the hub hangs", routed)
		}
		if n := log.Count(edge.StageSubscribe); n != 1 {
			t.Errorf("routed %v: reported at StageSubscribe %d times, want once: %v", routed, n, log)
		}
	}
}
