package tests

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/internal/testenv"
)

// BenchmarkScaleBackplane runs the scale setup of TestScaleRoutedReceivesOwnTopicsOnly
// (8 instances, 1,000 topics, each subscribed on 2 instances) on every
// backend, broadcast and routed. One op is a round: one message to every
// topic, 1,000 in all. It reports what each instance reads off the
// backplane per round (Stats.BackplaneMessages and BackplaneBytes, the mean
// over the instances), what its driver hands its Hub (Stats.Received), and
// the deliveries per second to the members.
func BenchmarkScaleBackplane(b *testing.B) {
	for _, backend := range scaleBackends() {
		for _, routed := range []bool{false, true} {
			mode := "broadcast"
			if routed {
				mode = "routed"
			}
			b.Run(backend.name+"/"+mode, func(b *testing.B) {
				c := newScaleCluster(b, backend, routed)
				// One round first, so that nothing of the route wait
				// is still on its way.
				c.publishRound(b)
				c.flush(b)
				c.awaitMeasured(b)
				c.awaitHanded(b)
				before := make([]edge.Stats, scaleInstances)
				for i, h := range c.hubs {
					before[i] = h.Stats()
				}
				const ahead = 4 // rounds in flight at most
				b.ResetTimer()
				for range b.N {
					c.publishRound(b)
					if c.rounds > ahead {
						c.awaitRounds(b, c.rounds-ahead)
					}
				}
				c.flush(b)
				c.awaitMeasured(b)
				c.awaitHanded(b) // the other topics' messages too
				b.StopTimer()
				var reads, bytes, handed uint64
				for i, h := range c.hubs {
					st := h.Stats()
					reads += st.BackplaneMessages - before[i].BackplaneMessages
					bytes += st.BackplaneBytes - before[i].BackplaneBytes
					handed += st.Received - before[i].Received
					if st.Dropped > 0 || st.Errors > 0 {
						b.Fatalf("instance %d: %+v: %v", i, st, c.logs[i])
					}
				}
				per := float64(scaleInstances) * float64(b.N)
				b.ReportMetric(float64(reads)/per, "backplane-msgs/instance/round")
				b.ReportMetric(float64(bytes)/per, "backplane-bytes/instance/round")
				b.ReportMetric(float64(handed)/per, "handed/instance/round")
				b.ReportMetric(float64(2*scaleTopics*b.N)/b.Elapsed().Seconds(), "deliveries/s")
			})
		}
	}
}

// awaitRounds waits until every endpoint has the measured messages of the
// first n rounds.
func (c *scaleCluster) awaitRounds(tb testing.TB, n int) {
	tb.Helper()
	for i, e := range c.eps {
		want := len(c.topics[i]) * n
		c.await(tb, fmt.Sprintf("instance %d to receive %d measured messages", i, want), func() bool {
			return e.count(func(e *scaleEndpoint) int { return e.total }) >= want
		})
	}
}

const (
	// churnSteadyTopics is how many topics stay subscribed while others
	// churn.
	churnSteadyTopics = 100
	// churnWindow is how many steady messages hub A stays ahead of B at
	// most.
	churnWindow = 4096
)

// BenchmarkRoutedChurn measures routed relay while topics churn: hub A
// publishes 100-byte messages to 100 topics that a member of hub B stays
// subscribed to, as fast as it can, at most 4,096 messages ahead of what B
// has received. One op is one steady message. With churn, a goroutine on B
// meanwhile subscribes a member to a topic never used before and
// unsubscribes it, over and over, so that B's driver subscribes and
// unsubscribes on the backplane all along (after the linger). It reports
// the steady messages per second and, with churn, the churn cycles per
// second and what one cycle costs the Hub (the time its Subscribe and
// Unsubscribe calls take).
func BenchmarkRoutedChurn(b *testing.B) {
	for _, backend := range scaleBackends() {
		if backend.name == "memsync" {
			continue // no backplane: a route costs nothing
		}
		for _, churn := range []bool{false, true} {
			name := backend.name + "/steady"
			if churn {
				name = backend.name + "/churning"
			}
			b.Run(name, func(b *testing.B) { benchChurn(b, backend, churn) })
		}
	}
}

// churnCounter counts the deliveries of the steady topics, and apart from
// them the probes that wait for their routes.
type churnCounter struct {
	n, probes atomic.Int64
	notify    chan struct{}
}

func (c *churnCounter) Deliver(d edge.Data) {
	if string(d.Bytes) == "probe" {
		c.probes.Add(1)
	} else {
		c.n.Add(1)
	}
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

func (c *churnCounter) Close(int, string) error { return nil }

// await waits until the counter reaches want, failing tb after scaleTimeout.
func (c *churnCounter) await(tb testing.TB, want int64) {
	tb.Helper()
	deadline := time.NewTimer(scaleTimeout)
	defer deadline.Stop()
	for c.n.Load() < want {
		select {
		case <-c.notify:
		case <-deadline.C:
			tb.Fatalf("delivered %d of %d steady messages", c.n.Load(), want)
		}
	}
}

func benchChurn(b *testing.B, backend scaleBackend, churn bool) {
	syncs := backend.syncs(b, true)[:2]
	hubs := make([]*edge.Hub, 2)
	logs := make([]*testenv.ErrorLog, 2)
	for i, s := range syncs {
		logs[i] = testenv.NewErrorLog()
		h, err := edge.New(edge.Options{Sync: s, OnError: logs[i].OnError, QueueSize: 4 * churnWindow})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { h.Close() })
		hubs[i] = h
	}
	a, hubB := hubs[0], hubs[1]
	counter := &churnCounter{notify: make(chan struct{}, 1)}
	m, err := hubB.Join(edge.NewID(), "/churn", counter)
	if err != nil {
		b.Fatal(err)
	}
	topics := make([]string, churnSteadyTopics)
	for k := range topics {
		topics[k] = "steady-" + strconv.Itoa(k)
		if err := m.Subscribe(topics[k]); err != nil {
			b.Fatal(err)
		}
	}
	// Wait for every route: a probe to each topic until all have arrived.
	ctx := context.Background()
	probe := edge.Message{Namespace: "/churn", Data: edge.Text("probe")}
	deadline := time.Now().Add(scaleTimeout)
	for k := 0; k < len(topics); {
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d steady topics routed within %v", k, len(topics), scaleTimeout)
		}
		want := counter.probes.Load() + 1
		probe.Topic = topics[k]
		if err := a.Publish(ctx, probe); err != nil {
			b.Fatal(err)
		}
		if waitProbe(counter, want, 50*time.Millisecond) {
			k++
		}
	}

	stop := make(chan struct{})
	var cycles atomic.Int64
	var spent atomic.Int64 // ns in Subscribe and Unsubscribe
	var wg sync.WaitGroup
	if churn {
		wg.Go(func() {
			cm, err := hubB.Join(edge.NewID(), "/churn", &churnCounter{notify: make(chan struct{}, 1)})
			if err != nil {
				b.Error(err)
				return
			}
			defer cm.Leave()
			// A cycle every 100 µs at most: about what a busy front
			// end sees, and room left for the relay.
			pace := time.NewTicker(100 * time.Microsecond)
			defer pace.Stop()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-pace.C:
				}
				topic := "churn-" + strconv.Itoa(i)
				start := time.Now()
				if err := cm.Subscribe(topic); err != nil {
					b.Error(err)
					return
				}
				if err := cm.Unsubscribe(topic); err != nil {
					b.Error(err)
					return
				}
				spent.Add(int64(time.Since(start)))
				cycles.Add(1)
			}
		})
	}

	msg := edge.Message{Namespace: "/churn", Data: edge.Text(string(make([]byte, 100)))}
	b.ResetTimer()
	for i := range b.N {
		msg.Topic = topics[i%len(topics)]
		if err := a.Publish(ctx, msg); err != nil {
			b.Fatal(err)
		}
		if i >= churnWindow && i%256 == 0 {
			counter.await(b, int64(i-churnWindow))
		}
	}
	counter.await(b, int64(b.N))
	b.StopTimer()
	close(stop)
	wg.Wait()
	for i, h := range hubs {
		if st := h.Stats(); st.Dropped > 0 || st.Errors > 0 {
			b.Fatalf("hub %d: %+v: %v", i, st, logs[i])
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "steady-msgs/s")
	if n := cycles.Load(); churn && n > 0 {
		b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "churn-cycles/s")
		b.ReportMetric(float64(spent.Load())/float64(n), "ns/churn-cycle")
	}
}

// waitProbe reports whether c's probes reach want within d.
func waitProbe(c *churnCounter, want int64, d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	for c.probes.Load() < want {
		select {
		case <-c.notify:
		case <-timer.C:
			return false
		}
	}
	return true
}
