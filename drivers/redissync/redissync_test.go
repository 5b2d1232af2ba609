package redissync_test

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/edgesync/edgesync/drivers/drivertest"
	"github.com/edgesync/edgesync/drivers/redissync"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/envelope"
	"github.com/edgesync/edgesync/internal/testenv"
)

// waitTimeout bounds every wait of these tests; a test that works never
// meets it.
const waitTimeout = 10 * time.Second

// newClient returns a client of the test server, closed when t ends.
func newClient(t testing.TB) *redis.Client {
	t.Helper()
	opt, err := redis.ParseURL(testenv.RedisURL(t))
	if err != nil {
		t.Fatalf("redis.ParseURL: %v", err)
	}
	return openClient(t, opt)
}

func openClient(t testing.TB, opt *redis.Options) *redis.Client {
	t.Helper()
	c := redis.NewClient(opt)
	t.Cleanup(func() { c.Close() })
	return c
}

func ctxFor(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

func TestDriverConformance(t *testing.T) {
	client := newClient(t)
	drivertest.RunDriverTests(t, func(tb testing.TB, channel string) edge.Sync {
		return redissync.New(redissync.Options{Client: client, Channel: channel})
	})
}

func TestRegistryConformance(t *testing.T) {
	client := newClient(t)
	drivertest.RunRegistryTests(t, func(tb testing.TB) edge.Registry {
		return newRegistry(tb, client, testenv.Channel(tb))
	})
}

func newRegistry(t testing.TB, client redis.UniversalClient, channel string) *redissync.Registry {
	t.Helper()
	r, err := redissync.NewRegistry(redissync.RegistryOptions{Client: client, Channel: channel})
	if err != nil {
		t.Fatalf("NewRegistry: %v", err)
	}
	return r
}

// newHub starts a Hub relaying through Redis on channel, closed when t ends.
func newHub(t *testing.T, opts redissync.Options) (*edge.Hub, *testenv.ErrorLog) {
	t.Helper()
	log := testenv.NewErrorLog()
	hub, err := edge.New(edge.Options{Sync: redissync.New(opts), OnError: log.OnError})
	if err != nil {
		t.Fatalf("edge.New: %v", err)
	}
	t.Cleanup(func() { hub.Close() })
	return hub, log
}

func TestOptionsAreValidated(t *testing.T) {
	client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer client.Close()
	for _, tc := range []struct {
		name string
		opts redissync.Options
		want string
	}{
		{"no client", redissync.Options{Channel: "c"}, "Client"},
		{"no channel", redissync.Options{Client: client}, "Channel"},
	} {
		hub, err := edge.New(edge.Options{Sync: redissync.New(tc.opts)})
		if err == nil {
			hub.Close()
			t.Errorf("%s: edge.New returned no error", tc.name)
		} else if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: edge.New: %v, want it to name %s", tc.name, err, tc.want)
		}
	}
	if _, err := redissync.NewRegistry(redissync.RegistryOptions{Channel: "c"}); err == nil {
		t.Error("NewRegistry without a client returned no error")
	}
	if _, err := redissync.NewRegistry(redissync.RegistryOptions{Client: client}); err == nil {
		t.Error("NewRegistry without a channel returned no error")
	}
}

// Payloads from strangers on the channel that are not envelopes, or are too
// large, are dropped and reported; a valid one from a stranger is delivered,
// and the relay goes on.
func TestStrangerPayloads(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	channel := testenv.Channel(t)
	const maxBytes = 4096
	a, _ := newHub(t, redissync.Options{Client: client, Channel: channel})
	b, bLog := newHub(t, redissync.Options{Client: client, Channel: channel, MaxMessageBytes: maxBytes})
	got := testenv.Join(t, b, "/ns", "t")

	stranger := edge.NewID()
	foreign, _ := envelope.Encode(stranger, edge.Message{Namespace: "/ns", Topic: "t", Data: edge.Text("from a stranger")})
	huge, _ := envelope.Encode(stranger, edge.Message{Namespace: "/ns", Topic: "t", Data: edge.Text(strings.Repeat("x", maxBytes))})
	malformed := []string{
		"not json",
		"\xff\xfe\x00\x01",
		`{"id":"` + stranger + `","msg":{"namespace":"/ns","topic":"t"}}`,
		`[1,2,3]`,
	}
	ctx := ctxFor(t)
	for _, p := range append(slices.Clone(malformed), string(huge), string(foreign)) {
		if err := client.Publish(ctx, channel, p).Err(); err != nil {
			t.Fatalf("raw PUBLISH: %v", err)
		}
	}
	testenv.Publish(t, a, "/ns", "t", "still flowing")
	// Redis delivers in order, so everything before it has been handled.
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

// A Node crossws instance on the same channel interoperates: what it
// publishes (the wire of its own encodeEnvelope) is delivered, and what a Hub
// publishes is what crossws would have written.
func TestCrosswsInterop(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	channel := testenv.Channel(t)
	hub, log := newHub(t, redissync.Options{Client: client, Channel: channel})
	vectors := testenv.CrosswsVectors(t).Encode
	ctx := ctxFor(t)

	// A member in namespace "/_ws" receives what is published to every
	// namespace.
	address := func(v testenv.EncodeVector) string {
		return cmp.Or(v.Message.Namespace, "/_ws") + " " + v.Message.Topic
	}
	sinks := map[string]*testenv.Sink{}
	for _, v := range vectors {
		if v.ID == hub.ID() {
			t.Fatal("the vector's id is the hub's")
		}
		if sinks[address(v)] == nil {
			sinks[address(v)] = testenv.Join(t, hub, cmp.Or(v.Message.Namespace, "/_ws"), v.Message.Topic)
		}
		if err := client.Publish(ctx, channel, v.Wire).Err(); err != nil {
			t.Fatalf("raw PUBLISH: %v", err)
		}
	}
	for _, v := range vectors {
		want := v.Message.Data
		s := sinks[address(v)]
		s.WaitFor(t, "vector "+v.Name, func() bool {
			return s.Find(func(d edge.Data) bool { return d.Binary == want.Binary && bytes.Equal(d.Bytes, want.Bytes) })
		})
	}
	if errs := log.Errors(edge.StageDelivery); len(errs) > 0 {
		t.Errorf("reported at StageDelivery: %v", errs)
	}

	// The other way: a Hub's envelope is byte for byte crossws's.
	v := vectors[0]
	raw := client.Subscribe(ctx, channel)
	defer raw.Close()
	if _, err := raw.Receive(ctx); err != nil { // the subscription's confirmation
		t.Fatalf("raw SUBSCRIBE: %v", err)
	}
	if err := hub.Publish(ctx, v.Message); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	msg, err := raw.ReceiveMessage(ctx)
	for err == nil && strings.HasPrefix(msg.Payload, `{"edgesync":"probe",`) {
		msg, err = raw.ReceiveMessage(ctx) // the Hub's liveness probes
	}
	if err != nil {
		t.Fatalf("raw receive: %v", err)
	}
	if want := strings.Replace(v.Wire, v.ID, hub.ID(), 1); msg.Payload != want {
		t.Errorf("the Hub published\n\t%s\nwant\n\t%s", msg.Payload, want)
	}
}

// killPubSub kills the pub/sub connections of the clients named name.
func killPubSub(t *testing.T, admin *redis.Client, name string) {
	t.Helper()
	ctx := ctxFor(t)
	list, err := admin.ClientList(ctx).Result()
	if err != nil {
		t.Fatalf("CLIENT LIST: %v", err)
	}
	killed := 0
	for line := range strings.Lines(list) {
		fields := strings.Fields(line)
		if !slices.Contains(fields, "name="+name) {
			continue
		}
		for _, f := range fields {
			if id, ok := strings.CutPrefix(f, "id="); ok {
				n, err := admin.ClientKillByFilter(ctx, "TYPE", "pubsub", "ID", id).Result()
				if err != nil {
					t.Fatalf("CLIENT KILL: %v", err)
				}
				killed += int(n)
			}
		}
	}
	if killed == 0 {
		t.Fatalf("no pub/sub connection named %q to kill in:\n%s", name, list)
	}
}

// After its subscription connection is killed (CLIENT KILL TYPE pubsub), a
// Hub reports the outage once and is subscribed again.
func TestResubscribeAfterClientKill(t *testing.T) {
	t.Parallel()
	admin := newClient(t)
	channel := testenv.Channel(t)
	opt, err := redis.ParseURL(testenv.RedisURL(t))
	if err != nil {
		t.Fatal(err)
	}
	opt.ClientName = channel + "-b" // to kill B's connection and no other
	bClient := openClient(t, opt)

	a, _ := newHub(t, redissync.Options{Client: admin, Channel: channel})
	b, bLog := newHub(t, redissync.Options{Client: bClient, Channel: channel})
	got := testenv.Join(t, b, "/ns", "t")
	stop := testenv.Stream(t, a, "/ns", "t")
	got.WaitFor(t, "the stream", func() bool { return got.HasPrefix("stream-") })

	killPubSub(t, admin, opt.ClientName)
	t.Logf("reported: %v", bLog.Await(t, edge.StageSubscribe, 0, waitTimeout))
	testenv.RelayUntilDelivered(t, a, got, "/ns", "t")
	stop()
	if errs := bLog.Errors(edge.StageSubscribe); len(errs) != 1 {
		t.Errorf("reported at StageSubscribe %d times, want once per outage: %v", len(errs), errs)
	}
	if errs := bLog.Errors(edge.StageDelivery); len(errs) > 0 {
		t.Errorf("reported at StageDelivery: %v", errs)
	}
	if err := bClient.Ping(ctxFor(t)).Err(); err != nil {
		t.Errorf("the user's client after the outage: %v", err)
	}
}

// redisServer is a redis-server child process of the test.
type redisServer struct {
	cmd    *exec.Cmd
	exited chan struct{}
}

// startRedis starts redis-server on port and waits until it answers.
func startRedis(t *testing.T, path, port string) *redisServer {
	t.Helper()
	cmd := exec.Command(path, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", t.TempDir())
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting redis-server: %v", err)
	}
	s := &redisServer{cmd: cmd, exited: make(chan struct{})}
	go func() { cmd.Wait(); close(s.exited) }()
	t.Cleanup(s.stop)

	probe := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + port, MaxRetries: -1, DialTimeout: time.Second})
	defer probe.Close()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for probe.Ping(context.Background()).Err() != nil {
		select {
		case <-tick.C:
		case <-s.exited:
			t.Fatalf("redis-server on port %s exited: %v", port, cmd.ProcessState)
		case <-deadline.C:
			t.Fatalf("redis-server on port %s did not answer within %v", port, waitTimeout)
		}
	}
	return s
}

// stop kills the server and waits until it has exited.
func (s *redisServer) stop() {
	s.cmd.Process.Kill()
	<-s.exited
}

// After the server restarts, a Hub reports the outage once and is subscribed
// again.
func TestResubscribeAfterServerRestart(t *testing.T) {
	t.Parallel()
	path, err := exec.LookPath("redis-server")
	if err != nil {
		testenv.Unavailable(t, "redis-server is not installed: "+err.Error())
	}
	port := testenv.FreePort(t)
	server := startRedis(t, path, port)
	client := openClient(t, &redis.Options{Addr: "127.0.0.1:" + port})
	channel := testenv.Channel(t)
	a, _ := newHub(t, redissync.Options{Client: client, Channel: channel})
	b, bLog := newHub(t, redissync.Options{Client: client, Channel: channel})
	got := testenv.Join(t, b, "/ns", "t")
	stop := testenv.Stream(t, a, "/ns", "t")
	got.WaitFor(t, "the stream", func() bool { return got.HasPrefix("stream-") })

	server.stop()
	bLog.Await(t, edge.StageSubscribe, 0, waitTimeout)
	startRedis(t, path, port)
	testenv.RelayUntilDelivered(t, a, got, "/ns", "t")
	stop()
	if errs := bLog.Errors(edge.StageSubscribe); len(errs) != 1 {
		t.Errorf("reported at StageSubscribe %d times, want once per outage: %v", len(errs), errs)
	}
}

// When Redis cannot be reached, a Hub starts anyway, reports the failure at
// StageSubscribe and delivers locally.
func TestUnreachableAtStart(t *testing.T) {
	t.Parallel()
	client := openClient(t, &redis.Options{Addr: "127.0.0.1:" + testenv.FreePort(t)})
	hub, log := newHub(t, redissync.Options{Client: client, Channel: testenv.Channel(t)})
	t.Logf("reported: %v", log.Await(t, edge.StageSubscribe, 0, waitTimeout))

	got := testenv.Join(t, hub, "/ns", "t")
	testenv.Publish(t, hub, "/ns", "t", "local")
	if !got.Has("local") {
		t.Error("a local publish was not delivered while Redis is unreachable")
	}
	closed := make(chan error, 1)
	go func() { closed <- hub.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Errorf("Close: %v", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("Close did not return while Redis is unreachable")
	}
}

// Closing the Hub closes the driver's subscription but not the user's
// client.
func TestClientStaysOpen(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	channel := testenv.Channel(t)
	ctx := ctxFor(t)
	hub, err := edge.New(edge.Options{Sync: redissync.New(redissync.Options{Client: client, Channel: channel})})
	if err != nil {
		t.Fatal(err)
	}
	if n := client.PubSubNumSub(ctx, channel).Val()[channel]; n != 1 {
		t.Errorf("PUBSUB NUMSUB = %d with the Hub running, want 1", n)
	}
	if err := hub.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := client.Ping(ctx).Err(); err != nil {
		t.Fatalf("the user's client after Close: %v", err)
	}
	if err := client.Publish(ctx, channel, "x").Err(); err != nil {
		t.Fatalf("PUBLISH with the user's client after Close: %v", err)
	}
	// Redis drops the subscriber once it has read the closed connection.
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for client.PubSubNumSub(ctx, channel).Val()[channel] != 0 {
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatal("the subscription connection is still open after Close")
		}
	}
}

// The registry escapes namespace, topic and channel in its key names, keeps
// every key of a channel under one hash tag and sets their expiry.
func TestRegistryKeys(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	ctx := ctxFor(t)
	channel := testenv.Channel(t) + ":{a}%"
	r := newRegistry(t, client, channel)
	prefix := "edgesync:{" + strings.TrimSuffix(channel, ":{a}%") + "%3A%7Ba%7D%25}:"

	c := edge.Conn{ID: "conn:1", Namespace: "/x:y", ExpiresAt: time.Now().Add(time.Hour)}
	if err := r.Add(ctx, c); err != nil {
		t.Fatal(err)
	}
	const topic = "t:{1}%"
	if err := r.Subscribe(ctx, c.ID, topic); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{
		prefix + "conn:conn%3A1",
		prefix + "topics:conn%3A1",
		prefix + "subs:/x%3Ay:t%3A%7B1%7D%25",
		prefix + "nss:t%3A%7B1%7D%25",
	} {
		ttl, err := client.PTTL(ctx, key).Result()
		switch {
		case err != nil:
			t.Errorf("PTTL %s: %v", key, err)
		case ttl < 0:
			t.Errorf("PTTL %s = %v: the key is missing or has no expiry", key, ttl)
		case ttl < 59*time.Minute:
			t.Errorf("PTTL %s = %v, want the connection's hour", key, ttl)
		}
	}

	// ':' in a namespace or topic does not make two subscriber sets one.
	c1 := edge.Conn{ID: edge.NewID(), Namespace: "a:b"}
	c2 := edge.Conn{ID: edge.NewID(), Namespace: "a"}
	for _, sub := range []struct {
		c     edge.Conn
		topic string
	}{{c1, "c"}, {c2, "b:c"}} {
		if err := r.Add(ctx, sub.c); err != nil {
			t.Fatal(err)
		}
		if err := r.Subscribe(ctx, sub.c.ID, sub.topic); err != nil {
			t.Fatal(err)
		}
	}
	if got := subscribers(t, r, "a:b", "c"); !slices.Equal(got, []string{c1.ID}) {
		t.Errorf("Subscribers(a:b, c) = %q, want %q", got, c1.ID)
	}
	if got := subscribers(t, r, "a", "b:c"); !slices.Equal(got, []string{c2.ID}) {
		t.Errorf("Subscribers(a, b:c) = %q, want %q", got, c2.ID)
	}
}

func subscribers(t *testing.T, r edge.Registry, namespace, topic string) []string {
	t.Helper()
	var ids []string
	if err := r.Subscribers(ctxFor(t), namespace, topic, func(id string) bool {
		ids = append(ids, id)
		return true
	}); err != nil {
		t.Fatalf("Subscribers: %v", err)
	}
	slices.Sort(ids)
	return ids
}

// Subscribers skips the ids of connections that expired and takes them, and
// namespaces left without subscribers, out of the index.
func TestRegistryReapsExpired(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	ctx := ctxFor(t)
	channel := testenv.Channel(t)
	r := newRegistry(t, client, channel)
	prefix := "edgesync:{" + channel + "}:"

	live := edge.Conn{ID: edge.NewID(), Namespace: "/one"}
	gone := edge.Conn{ID: edge.NewID(), Namespace: "/one"}
	alone := edge.Conn{ID: edge.NewID(), Namespace: "/two"}
	for _, c := range []edge.Conn{live, gone, alone} {
		if err := r.Add(ctx, c); err != nil {
			t.Fatal(err)
		}
		if err := r.Subscribe(ctx, c.ID, "t"); err != nil {
			t.Fatal(err)
		}
	}
	// What Redis does when the connections expire.
	if err := client.Del(ctx, prefix+"conn:"+gone.ID, prefix+"conn:"+alone.ID).Err(); err != nil {
		t.Fatal(err)
	}
	for range 2 { // the first pass empties /two, the second drops it
		if got := subscribers(t, r, "", "t"); !slices.Equal(got, []string{live.ID}) {
			t.Errorf("Subscribers = %q, want only %q", got, live.ID)
		}
	}
	if ids := client.SMembers(ctx, prefix+"subs:/one:t").Val(); !slices.Equal(ids, []string{live.ID}) {
		t.Errorf("subscriber set of /one = %q, want only %q", ids, live.ID)
	}
	if nss := client.SMembers(ctx, prefix+"nss:t").Val(); !slices.Equal(nss, []string{"/one"}) {
		t.Errorf("namespaces of t = %q, want only /one", nss)
	}
}

// proxy forwards TCP connections to a server. Freeze makes the connections
// open at the time go silent, as a network that drops packets would: what
// they carry is discarded, and they stay open. Connections made later are
// forwarded.
type proxy struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	conns  []*proxyConn
	closed bool
	wg     sync.WaitGroup
}

type proxyConn struct {
	client, server net.Conn
	frozen         atomic.Bool
}

func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			client.Close()
			continue
		}
		c := &proxyConn{client: client, server: server}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			client.Close()
			server.Close()
			return
		}
		p.conns = append(p.conns, c)
		p.wg.Add(2)
		p.mu.Unlock()
		go p.pipe(c, client, server)
		go p.pipe(c, server, client)
	}
}

// pipe copies from src to dst until either closes, discarding what it reads
// while c is frozen.
func (p *proxy) pipe(c *proxyConn, src, dst net.Conn) {
	defer p.wg.Done()
	defer src.Close()
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !c.frozen.Load() {
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// freeze silences the connections open now.
func (p *proxy) freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.frozen.Store(true)
	}
}

func (p *proxy) close() {
	p.mu.Lock()
	p.closed = true
	conns := p.conns
	p.mu.Unlock()
	p.ln.Close()
	for _, c := range conns {
		c.client.Close()
		c.server.Close()
	}
	p.wg.Wait()
}

// A subscription connection that goes silent without closing (a network
// that drops packets) is found out with PING, reported once and replaced.
func TestSilentConnectionIsReplaced(t *testing.T) {
	t.Parallel()
	direct := newClient(t)
	p := newProxy(t, direct.Options().Addr)
	opt, err := redis.ParseURL(testenv.RedisURL(t))
	if err != nil {
		t.Fatal(err)
	}
	opt.Addr = p.addr()
	viaProxy := openClient(t, opt)
	channel := testenv.Channel(t)

	a, _ := newHub(t, redissync.Options{Client: direct, Channel: channel})
	bLog := testenv.NewErrorLog()
	const ping = 100 * time.Millisecond
	b, err := edge.New(edge.Options{
		Sync:    redissync.NewWithProbeTiming(redissync.Options{Client: viaProxy, Channel: channel}, ping, 5*ping),
		OnError: bLog.OnError,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	got := testenv.Join(t, b, "/ns", "t")
	stop := testenv.Stream(t, a, "/ns", "t")
	got.WaitFor(t, "the stream", func() bool { return got.HasPrefix("stream-") })

	p.freeze()
	t.Logf("reported: %v", bLog.Await(t, edge.StageSubscribe, 0, waitTimeout))
	testenv.RelayUntilDelivered(t, a, got, "/ns", "t")
	stop()
	if errs := bLog.Errors(edge.StageSubscribe); len(errs) != 1 {
		t.Errorf("reported at StageSubscribe %d times, want once per outage: %v", len(errs), errs)
	}
}

// probeDropper is a client whose PUBLISH of a probe does nothing while drop
// is set: a subscription that answers PING but receives nothing, as one left
// on the wrong server by a failover.
type probeDropper struct {
	redis.UniversalClient
	drop atomic.Bool
}

func (c *probeDropper) Publish(ctx context.Context, channel string, message any) *redis.IntCmd {
	if b, ok := message.([]byte); ok && c.drop.Load() && bytes.HasPrefix(b, []byte(`{"edgesync":"probe",`)) {
		return redis.NewIntResult(0, nil)
	}
	return c.UniversalClient.Publish(ctx, channel, message)
}

// A subscription whose probes do not come back is reported and replaced,
// even while messages keep arriving on it.
func TestSubscriptionMissingItsProbesIsReplaced(t *testing.T) {
	t.Parallel()
	client := &probeDropper{UniversalClient: newClient(t)}
	channel := testenv.Channel(t)
	a, _ := newHub(t, redissync.Options{Client: newClient(t), Channel: channel})
	bLog := testenv.NewErrorLog()
	b, err := edge.New(edge.Options{
		Sync:    redissync.NewWithProbeTiming(redissync.Options{Client: client, Channel: channel}, 50*time.Millisecond, 500*time.Millisecond),
		OnError: bLog.OnError,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	got := testenv.Join(t, b, "/ns", "t")
	stop := testenv.Stream(t, a, "/ns", "t")
	defer stop()
	got.WaitFor(t, "the stream", func() bool { return got.HasPrefix("stream-") })

	// A subscription that receives messages is alive: its probes are
	// judged once it has nothing left to read.
	stop()
	client.drop.Store(true)
	lost := bLog.Await(t, edge.StageSubscribe, 0, waitTimeout)
	client.drop.Store(false)
	if !strings.Contains(lost.Error(), "probe") {
		t.Errorf("reported %v, want the probe named", lost)
	}
	testenv.RelayUntilDelivered(t, a, got, "/ns", "t")
	if errs := bLog.Errors(edge.StageDelivery); len(errs) > 0 {
		t.Errorf("probes reported at StageDelivery: %v", errs)
	}
}

// A backlog that the deliver callback takes longer than the probe timeout to
// drain is no dead subscription: it is read to the end, and nothing is
// reported or lost.
func TestBacklogIsNotTakenForADeadSubscription(t *testing.T) {
	t.Parallel()
	channel := testenv.Channel(t)
	log := testenv.NewErrorLog()
	d, err := redissync.NewWithProbeTiming(redissync.Options{Client: newClient(t), Channel: channel},
		50*time.Millisecond, 500*time.Millisecond)(edge.Instance{ID: edge.NewID(), Report: log.Report})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	const n = 2000
	gate := make(chan struct{})
	all := make(chan struct{})
	var got atomic.Int32
	if err := d.Subscribe(context.Background(), func(edge.Message) {
		<-gate
		if got.Add(1) == n {
			close(all)
		}
	}); err != nil {
		t.Fatal(err)
	}
	pipe := newClient(t).Pipeline()
	for i := range n {
		env, _ := envelope.Encode(edge.NewID(), edge.Message{Topic: "t", Data: edge.Text(strconv.Itoa(i))})
		pipe.Publish(ctxFor(t), channel, env)
	}
	if _, err := pipe.Exec(ctxFor(t)); err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(2*time.Second, func() { close(gate) }) // the backlog outlasts four probe timeouts
	testenv.Recv(t, all, waitTimeout, "every message of the backlog")
	if errs := log.Errors(testenv.AnyStage); len(errs) > 0 {
		t.Fatalf("reported %v for a backlog", errs)
	}
}

// subscribeHole is a dialer whose connections, while hole is set, swallow
// everything from the first SUBSCRIBE on: the connection stays open and
// answers nothing, as behind a proxy that black-holes it.
type subscribeHole struct {
	hole  atomic.Bool
	holed chan struct{} // signalled for each connection that went into the hole
}

func (h *subscribeHole) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return &holeConn{Conn: c, h: h}, nil
}

// holeConn swallows what is written from the first SUBSCRIBE on, so that
// Redis has nothing to answer: reads wait, up to their deadline, for ever.
type holeConn struct {
	net.Conn
	h    *subscribeHole
	dead atomic.Bool
}

func (c *holeConn) Write(b []byte) (int, error) {
	if c.h.hole.Load() && !c.dead.Load() && bytes.Contains(bytes.ToLower(b), []byte("subscribe")) {
		c.dead.Store(true)
		select {
		case c.h.holed <- struct{}{}:
		default:
		}
	}
	if c.dead.Load() {
		return len(b), nil
	}
	return c.Conn.Write(b)
}

// A SUBSCRIBE that is never answered (the new connection is open, but dead)
// does not leave the driver waiting for ever: it is replaced, again and
// again, with one report for the outage, until a subscription works.
func TestUnansweredSubscribeIsReplaced(t *testing.T) {
	t.Parallel()
	admin := newClient(t)
	channel := testenv.Channel(t)
	opt, err := redis.ParseURL(testenv.RedisURL(t))
	if err != nil {
		t.Fatal(err)
	}
	hole := &subscribeHole{holed: make(chan struct{}, 16)}
	opt.ClientName, opt.Dialer, opt.ContextTimeoutEnabled = channel+"-b", hole.dial, true
	a, _ := newHub(t, redissync.Options{Client: admin, Channel: channel})
	bLog := testenv.NewErrorLog()
	b, err := edge.New(edge.Options{
		Sync:    redissync.NewWithProbeTiming(redissync.Options{Client: openClient(t, opt), Channel: channel}, 50*time.Millisecond, 500*time.Millisecond),
		OnError: bLog.OnError,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	got := testenv.Join(t, b, "/ns", "t")
	testenv.RelayUntilDelivered(t, a, got, "/ns", "t")

	hole.hole.Store(true)
	killPubSub(t, admin, opt.ClientName) // go-redis dials again, into the hole
	for i := range 3 {                   // the first SUBSCRIBE into the hole, and two replacements
		testenv.Recv(t, hole.holed, waitTimeout, fmt.Sprintf("SUBSCRIBE %d into the hole", i+1))
	}
	hole.hole.Store(false)
	testenv.RelayUntilDelivered(t, a, testenv.Join(t, b, "/ns", "t"), "/ns", "t")
	if errs := bLog.Errors(edge.StageSubscribe); len(errs) != 1 {
		t.Errorf("reported at StageSubscribe %d times, want once for the outage: %v", len(errs), errs)
	}
}
