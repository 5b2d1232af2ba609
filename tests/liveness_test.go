package tests

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgesync/edgesync/drivers/pgsync"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/internal/faultproxy"
	"github.com/edgesync/edgesync/internal/testenv"
)

// These tests break the link between one instance and its backplane under a
// steady publish load: a partition, a frozen connection, a slow link, a
// server restart. Two instances share a channel; instance A reaches the
// backplane directly and instance B through a fault proxy. Each publishes a
// steady stream that a WebSocket client on the other instance (cross) and on
// its own (local) receive.
//
// For each fault: nothing crashes or deadlocks, the outage is reported once
// at edge.StageSubscribe (a slow link is no outage), cross-instance delivery
// is back within the bound, and local delivery never misses a message.

// Recovery bounds, as the drivers promise them: delivery is back within
// linkBound of the link returning, and within frozenBound of a connection
// freezing. On the publishing side, the relay on its way when the
// connection froze fails after the publish timeout (the Hub's
// PublishTimeout, 2 s: the Redis clients here enable context timeouts),
// and the next goes out on a new
// connection: that too is within frozenBound. The assertions add
// scheduling slack for a loaded machine.
const (
	linkBound    = 2 * time.Second
	frozenBound  = 5 * time.Second
	publishBound = frozenBound
	slack        = 500 * time.Millisecond
	// maxLocalGap bounds a pause of local delivery, well under the
	// publish timeout that a stalled relay waits for.
	maxLocalGap = 2 * time.Second
	// faultLength is how long a partition or a slow link lasts.
	faultLength = 5 * time.Second
)

// Publish rates of the two instances' streams.
const (
	periodA = 5 * time.Millisecond  // 200 messages/s
	periodB = 10 * time.Millisecond // 100 messages/s
)

// tally records when the messages of one stream arrive at one client.
type tally struct {
	mu      sync.Mutex
	arrived []arrival
	seen    map[int]bool
	signal  chan struct{}
}

type arrival struct {
	seq int
	at  time.Time
}

func newTally() *tally {
	return &tally{seen: make(map[int]bool), signal: make(chan struct{}, 1)}
}

func (ta *tally) add(seq int, at time.Time) {
	ta.mu.Lock()
	ta.arrived = append(ta.arrived, arrival{seq, at})
	ta.seen[seq] = true
	ta.mu.Unlock()
	select {
	case ta.signal <- struct{}{}:
	default:
	}
}

// after waits for the first message numbered above seq, and returns when it
// arrived. It fails t after timeout.
func (ta *tally) after(t *testing.T, seq int, timeout time.Duration, what string) time.Time {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		ta.mu.Lock()
		for _, a := range ta.arrived {
			if a.seq > seq {
				ta.mu.Unlock()
				return a.at
			}
		}
		ta.mu.Unlock()
		select {
		case <-ta.signal:
		case <-deadline.C:
			t.Fatalf("%s: no message after #%d arrived within %v", what, seq, timeout)
		}
	}
}

// missing returns how many of the messages numbered 1 to n have not
// arrived.
func (ta *tally) missing(n int) int {
	ta.mu.Lock()
	defer ta.mu.Unlock()
	m := 0
	for i := 1; i <= n; i++ {
		if !ta.seen[i] {
			m++
		}
	}
	return m
}

// maxGap returns the longest time between two arrivals.
func (ta *tally) maxGap() time.Duration {
	ta.mu.Lock()
	defer ta.mu.Unlock()
	var gap time.Duration
	for i := 1; i < len(ta.arrived); i++ {
		gap = max(gap, ta.arrived[i].at.Sub(ta.arrived[i-1].at))
	}
	return gap
}

// collect reads the frames of c into one tally per stream ("A", "B") until
// the connection ends. Any other frame (a probe that leaked out, say) is
// counted in odd.
func collect(c *client, tallies map[string]*tally, odd *atomic.Int64) {
	go func() {
		for {
			select {
			case f := <-c.frames:
				name, num, ok := strings.Cut(f.data, " ")
				seq, err := strconv.Atoi(num)
				if ta := tallies[name]; ok && err == nil && ta != nil {
					ta.add(seq, time.Now())
				} else {
					odd.Add(1)
				}
			case <-c.done:
				return
			}
		}
	}()
}

// publisher publishes a numbered stream on a hub: "A 1", "A 2", …
type publisher struct {
	mu   sync.Mutex
	seq  int
	stop chan struct{}
	done chan struct{}
}

func startPublisher(t *testing.T, hub *edge.Hub, name string, period time.Duration) *publisher {
	p := &publisher{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		tick := time.NewTicker(period)
		defer tick.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-tick.C:
			}
			p.mu.Lock()
			p.seq++
			seq := p.seq
			p.mu.Unlock()
			msg := edge.Message{Namespace: "/room", Topic: "chat", Data: edge.Text(fmt.Sprint(name, " ", seq))}
			if err := hub.Publish(context.Background(), msg); err != nil {
				t.Errorf("publish %s %d: %v", name, seq, err)
				return
			}
		}
	}()
	t.Cleanup(p.halt)
	return p
}

// last returns the number of the last message published.
func (p *publisher) last() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.seq
}

// halt stops the stream.
func (p *publisher) halt() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	<-p.done
}

// faultCluster is two instances, a and b, on one channel, with their
// streams and the clients that receive them.
type faultCluster struct {
	a, b       *instance
	bLog       *testenv.ErrorLog
	pubA, pubB *publisher
	cross      map[string]*tally // "A" at b's client, "B" at a's client
	local      *tally            // "B" at b's client
	localA     *tally            // "A" at a's client
	odd        atomic.Int64      // frames of neither stream
	aLog       *testenv.ErrorLog
}

// startFaultCluster starts the two instances on their Syncs, their clients
// and their streams, and waits until both directions deliver.
func startFaultCluster(t *testing.T, syncA, syncB edge.Sync) *faultCluster {
	t.Helper()
	fc := &faultCluster{cross: map[string]*tally{"A": newTally(), "B": newTally()}, local: newTally(), localA: newTally()}
	fc.a, fc.aLog = watched(t, syncA)
	fc.b, fc.bLog = watched(t, syncB)
	ca, cb := dial(t, fc.a.url("/room")), dial(t, fc.b.url("/room"))
	collect(ca, map[string]*tally{"A": fc.localA, "B": fc.cross["B"]}, &fc.odd)
	collect(cb, map[string]*tally{"A": fc.cross["A"], "B": fc.local}, &fc.odd)
	fc.pubA = startPublisher(t, fc.a.hub, "A", periodA)
	fc.pubB = startPublisher(t, fc.b.hub, "B", periodB)
	fc.cross["A"].after(t, 0, wait, "A to B before the fault")
	fc.cross["B"].after(t, 0, wait, "B to A before the fault")
	return fc
}

// recovered waits for both directions to deliver a message published after
// from, and returns how long after from each arrived (A to B, B to A).
func (fc *faultCluster) recovered(t *testing.T, from time.Time) (ab, ba time.Duration) {
	t.Helper()
	nA, nB := fc.pubA.last(), fc.pubB.last()
	ab = fc.cross["A"].after(t, nA, wait, "A to B").Sub(from)
	ba = fc.cross["B"].after(t, nB, wait, "B to A").Sub(from)
	return ab, ba
}

// finish stops the streams and checks what every fault must leave: each
// local client received every message of its own instance without a pause,
// nothing was dropped, no probe leaked out, and the memory in use is
// bounded.
func (fc *faultCluster) finish(t *testing.T) {
	t.Helper()
	fc.pubA.halt()
	fc.pubB.halt()
	for name, c := range map[string]struct {
		pub *publisher
		ta  *tally
	}{"A": {fc.pubA, fc.localA}, "B": {fc.pubB, fc.local}} {
		n := c.pub.last()
		c.ta.after(t, n-1, wait, name+"'s last local message")
		if m := c.ta.missing(n); m > 0 {
			t.Errorf("local delivery at %s missed %d of %d messages", name, m, n)
		}
		// Local delivery does not wait for the backplane: no pause
		// anywhere near the publish timeout.
		if gap := c.ta.maxGap(); gap > maxLocalGap {
			t.Errorf("local delivery at %s paused for %v", name, gap)
		}
	}
	for name, in := range map[string]*instance{"A": fc.a, "B": fc.b} {
		if st := in.hub.Stats(); st.Dropped > 0 {
			t.Errorf("instance %s dropped %d messages: its relay queue was full", name, st.Dropped)
		}
	}
	// The probes of each instance reach the other, which drops them
	// silently: nothing is reported at StageDelivery, and no client
	// receives anything but the streams.
	for name, log := range map[string]*testenv.ErrorLog{"A": fc.aLog, "B": fc.bLog} {
		if errs := log.Errors(edge.StageDelivery); len(errs) > 0 {
			t.Errorf("instance %s reported at StageDelivery: %v", name, errs)
		}
	}
	if n := fc.odd.Load(); n > 0 {
		t.Errorf("the clients received %d frames of neither stream", n)
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	if ms.HeapInuse > 512<<20 {
		t.Errorf("heap in use: %d MiB", ms.HeapInuse>>20)
	}
}

// subscribeReports returns the errors b reported at StageSubscribe.
func (fc *faultCluster) subscribeReports() []error {
	return fc.bLog.Errors(edge.StageSubscribe)
}

// checkOneOutage checks that b reported exactly one lost subscription.
func (fc *faultCluster) checkOneOutage(t *testing.T) {
	t.Helper()
	if errs := fc.subscribeReports(); len(errs) != 1 {
		t.Errorf("reported at StageSubscribe %d times, want once: %v", len(errs), errs)
	}
}

func within(t *testing.T, what string, got, bound time.Duration) {
	t.Helper()
	t.Logf("%s: %s: %v", t.Name(), what, got.Round(time.Millisecond))
	if got > bound+slack {
		t.Errorf("%s took %v, want at most %v", what, got.Round(time.Millisecond), bound)
	}
}

// pause lets a fault last d: it is the fault under test, not a wait for an
// event.
func pause(d time.Duration) { <-time.After(d) }

// backplane builds the Syncs of the two instances of a fault test: a
// reaches url directly, b through a proxy at viaURL.
type backplane struct {
	name   string
	url    func(t *testing.T) string
	target func(url string) string // the host:port of url
	syncs  func(t *testing.T, url, viaURL, channel string) (a, b edge.Sync)
}

var backplanes = []backplane{
	{
		name: "redis",
		url:  func(t *testing.T) string { return testenv.RedisURL(t) },
		syncs: func(t *testing.T, url, viaURL, channel string) (edge.Sync, edge.Sync) {
			return redisSync(t, url, channel), redisSync(t, viaURL, channel)
		},
	},
	{
		name: "postgres",
		url:  func(t *testing.T) string { return testenv.PostgresURL(t) },
		syncs: func(t *testing.T, url, viaURL, channel string) (edge.Sync, edge.Sync) {
			return pgsync.New(pgsync.Options{ConnString: url, Channel: channel}),
				pgsync.New(pgsync.Options{ConnString: viaURL, Channel: channel})
		},
	},
}

func hostPort(raw string) string {
	rest := raw[strings.Index(raw, "://")+3:]
	if i := strings.IndexAny(rest, "/?"); i >= 0 {
		rest = rest[:i]
	}
	if i := strings.LastIndexByte(rest, '@'); i >= 0 {
		rest = rest[i+1:]
	}
	return rest
}

// proxied starts a fault proxy to the server of url and returns it with the
// URL that reaches the server through it.
func proxied(t *testing.T, url string) (*faultproxy.Proxy, string) {
	t.Helper()
	target := hostPort(url)
	if _, _, err := net.SplitHostPort(target); err != nil {
		t.Fatalf("no host:port in %q: %v", url, err)
	}
	px, err := faultproxy.New(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { px.Close() })
	return px, strings.Replace(url, target, px.Addr(), 1)
}

// TestFaultRecovery runs every fault on every backplane, in parallel.
func TestFaultRecovery(t *testing.T) {
	for _, bp := range backplanes {
		t.Run(bp.name, func(t *testing.T) {
			t.Parallel()
			setup := func(t *testing.T) (*faultCluster, *faultproxy.Proxy) {
				url := bp.url(t)
				px, via := proxied(t, url)
				channel := testenv.Channel(t)
				a, b := bp.syncs(t, url, via, channel)
				return startFaultCluster(t, a, b), px
			}
			t.Run("partition", func(t *testing.T) {
				t.Parallel()
				fc, px := setup(t)
				px.Cut()
				fc.bLog.Await(t, edge.StageSubscribe, 0, wait)
				pause(faultLength)
				px.Restore()
				ab, ba := fc.recovered(t, time.Now())
				within(t, "A to B after the partition", ab, linkBound)
				within(t, "B to A after the partition", ba, linkBound)
				fc.finish(t)
				fc.checkOneOutage(t)
			})
			t.Run("frozen", func(t *testing.T) {
				t.Parallel()
				fc, px := setup(t)
				px.Freeze()
				ab, ba := fc.recovered(t, time.Now())
				within(t, "A to B after the freeze", ab, frozenBound)
				within(t, "B to A after the freeze", ba, publishBound)
				fc.finish(t)
				fc.checkOneOutage(t)
				px.Restore()
			})
			t.Run("slow", func(t *testing.T) {
				t.Parallel()
				fc, px := setup(t)
				px.Slow(200 * time.Millisecond)
				// A slow link still delivers.
				fc.recovered(t, time.Now())
				pause(faultLength)
				px.Restore()
				ab, ba := fc.recovered(t, time.Now())
				within(t, "A to B after the slow link", ab, linkBound)
				within(t, "B to A after the slow link", ba, linkBound)
				fc.finish(t)
				if errs := fc.subscribeReports(); len(errs) > 0 {
					t.Errorf("a slow link was reported as lost: %v", errs)
				}
			})
			t.Run("reset", func(t *testing.T) {
				t.Parallel()
				fc, px := setup(t)
				px.Reset()
				ab, ba := fc.recovered(t, time.Now())
				within(t, "A to B after a reset", ab, linkBound)
				within(t, "B to A after a reset", ba, linkBound)
				fc.finish(t)
				fc.checkOneOutage(t)
			})
		})
	}
}

// TestFaultRecoveryRedisRestart restarts a Redis server of the test's own
// under the steady load.
func TestFaultRecoveryRedisRestart(t *testing.T) {
	t.Parallel()
	srv := newRedisServer(t)
	srv.start()
	channel := testenv.Channel(t)
	fc := startFaultCluster(t, redisSync(t, srv.url(), channel), redisSync(t, srv.url(), channel))
	srv.stop()
	fc.bLog.Await(t, edge.StageSubscribe, 0, wait)
	srv.start()
	ab, ba := fc.recovered(t, time.Now())
	within(t, "A to B after the restart", ab, linkBound)
	within(t, "B to A after the restart", ba, linkBound)
	fc.finish(t)
	fc.checkOneOutage(t)
}
