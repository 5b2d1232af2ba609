package natssync_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/edgesync/edgesync/drivers/drivertest"
	"github.com/edgesync/edgesync/drivers/natssync"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/internal/testenv"
)

// clusterNodes is the size of the NATS clusters of these tests.
const clusterNodes = 3

// connectToNode returns a connection to node i of nodes, closed when t ends.
// It is given every node's URL, node i's first and no shuffling, so that it
// starts on node i and fails over to the others.
func connectToNode(t testing.TB, nodes []*testenv.NATSServer, i int, opts ...nats.Option) *nats.Conn {
	t.Helper()
	urls := nodes[i].URL
	for j, n := range nodes {
		if j != i {
			urls += "," + n.URL
		}
	}
	nc := connectTo(t, urls, append(opts, nats.DontRandomize())...)
	if got := nc.ConnectedUrl(); got != nodes[i].URL {
		t.Fatalf("connected to %s, want node %d at %s", got, i, nodes[i].URL)
	}
	return nc
}

// interestDriver is a broadcast driver whose Subscribe returns only once its
// subscription is known to every node of the cluster, not only to the node
// its connection is on. NATS spreads interest between nodes in the
// background, so a message published on another node the moment Subscribe
// returns could still miss it; the conformance cases publish that moment.
type interestDriver struct {
	edge.BatchDriver
	conn   *nats.Conn   // the driver's
	others []*nats.Conn // one on every other node
}

func (d interestDriver) Subscribe(ctx context.Context, deliver func(edge.Message)) error {
	if err := d.BatchDriver.Subscribe(ctx, deliver); err != nil {
		return err
	}
	return awaitInterest(ctx, d.conn, d.others)
}

// awaitInterest subscribes a probe subject on conn, after every subscription
// conn made before, and publishes on it from each of others until the probe
// arrives: a node forwards the interest of one connection in order, so the
// earlier subscriptions are then known on every node too.
func awaitInterest(ctx context.Context, conn *nats.Conn, others []*nats.Conn) error {
	subject := nats.NewInbox()
	sub, err := conn.SubscribeSync(subject)
	if err != nil {
		return err
	}
	defer sub.Unsubscribe()
	ctx, cancel := context.WithTimeout(ctx, waitTimeout)
	defer cancel()
	if err := conn.FlushWithContext(ctx); err != nil {
		return err
	}
	for i, other := range others {
		want := strconv.Itoa(i)
		for arrived := false; !arrived; {
			if err := other.Publish(subject, []byte(want)); err != nil {
				return err
			}
			if err := other.FlushWithContext(ctx); err != nil {
				return err
			}
			for {
				wait, cancelWait := context.WithTimeout(ctx, 20*time.Millisecond)
				m, err := sub.NextMsgWithContext(wait)
				cancelWait()
				if err != nil {
					if ctx.Err() != nil {
						return fmt.Errorf("interest not spread to every node: %w", ctx.Err())
					}
					break // publish again
				}
				if string(m.Data) == want {
					arrived = true
					break
				}
			}
		}
	}
	return nil
}

// The conformance suites pass with instances spread over the nodes of a
// cluster: instance k is on node k mod 3.
func TestClusterConformance(t *testing.T) {
	nodes := testenv.StartNATSCluster(t, clusterNodes)
	conns := make([]*nats.Conn, clusterNodes)
	for i := range conns {
		conns[i] = connectToNode(t, nodes, i)
	}
	spread := func(routed bool) func(tb testing.TB, channel string) edge.Sync {
		next := 0
		return func(tb testing.TB, channel string) edge.Sync {
			i := next % clusterNodes
			next++
			sync := natssync.New(natssync.Options{Conn: conns[i], Channel: channel, Routed: routed})
			if routed {
				return sync // the routed cases probe until their routes are in place
			}
			var others []*nats.Conn
			for j, c := range conns {
				if j != i {
					others = append(others, c)
				}
			}
			return func(inst edge.Instance) (edge.Driver, error) {
				d, err := sync(inst)
				if err != nil {
					return nil, err
				}
				return interestDriver{BatchDriver: d.(edge.BatchDriver), conn: conns[i], others: others}, nil
			}
		}
	}
	t.Run("Broadcast", func(t *testing.T) { drivertest.RunDriverTests(t, spread(false)) })
	t.Run("Routed", func(t *testing.T) { drivertest.RunRoutedDriverTests(t, spread(true)) })
}

// clusterHub is one Hub of TestClusterNodeKilled, with its node.
type clusterHub struct {
	name string
	node int
	conn *nats.Conn
	hub  *edge.Hub
	log  *testenv.ErrorLog
}

// Messages flow between hubs on the three nodes of a cluster, broadcast and
// routed, while one node is killed: every hub whose connection was on it
// reports the outage once, at StageSubscribe, and fails over to another
// node; the others report nothing; delivery resumes on every topic between
// every pair of hubs; and every hub closes.
func TestClusterNodeKilled(t *testing.T) {
	t.Parallel()
	nodes := testenv.StartNATSCluster(t, clusterNodes)
	const killed = 1
	topic := func(from int) string { return "from-" + strconv.Itoa(from) }
	var hubs []clusterHub
	for _, routed := range []bool{false, true} {
		mode := "broadcast"
		if routed {
			mode = "routed"
		}
		channel := testenv.Channel(t)
		group := make([]clusterHub, clusterNodes)
		for i := range group {
			nc := connectToNode(t, nodes, i, reconnecting()...)
			hub, log := newHub(t, natssync.New(natssync.Options{Conn: nc, Channel: channel, Routed: routed}))
			group[i] = clusterHub{name: fmt.Sprintf("%s hub on node %d", mode, i), node: i, conn: nc, hub: hub, log: log}
		}
		// Every hub subscribes to the topic of every other and streams
		// on its own, a message a millisecond.
		for i, to := range group {
			for j, from := range group {
				if i == j {
					continue
				}
				got := testenv.Join(t, to.hub, "/ns", topic(j))
				testenv.RelayUntilDelivered(t, from.hub, got, "/ns", topic(j))
			}
		}
		for j, from := range group {
			testenv.Stream(t, from.hub, "/ns", topic(j))
		}
		hubs = append(hubs, group...)
	}

	nodes[killed].Stop()
	for _, h := range hubs {
		if h.node == killed {
			t.Logf("%s reported: %v", h.name, h.log.Await(t, edge.StageSubscribe, 0, waitTimeout))
		}
	}
	// Delivery resumes between every pair, through the nodes left.
	for g := 0; g < len(hubs); g += clusterNodes {
		group := hubs[g : g+clusterNodes]
		for i, to := range group {
			for j, from := range group {
				if i != j {
					testenv.RelayUntilDelivered(t, from.hub, testenv.Join(t, to.hub, "/ns", topic(j)), "/ns", topic(j))
				}
			}
		}
	}
	for _, h := range hubs {
		want := 0
		if h.node == killed {
			want = 1
		}
		if errs := h.log.Errors(edge.StageSubscribe); len(errs) != want {
			t.Errorf("%s reported at StageSubscribe %d times, want %d: %v", h.name, len(errs), want, errs)
		}
		if errs := h.log.Errors(edge.StageDelivery); len(errs) > 0 {
			t.Errorf("%s reported at StageDelivery: %v", h.name, errs)
		}
		if url := h.conn.ConnectedUrl(); url == nodes[killed].URL {
			t.Errorf("%s is still connected to the killed node", h.name)
		}
	}
	// Nothing hangs: every Hub closes within the bound of the test.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, h := range hubs {
			h.hub.Close()
		}
	}()
	select {
	case <-done:
	case <-time.After(waitTimeout):
		t.Fatal("closing the hubs did not return")
	}
}
