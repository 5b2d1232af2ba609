package pgsync_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/edgesync/edgesync/drivers/drivertest"
	"github.com/edgesync/edgesync/drivers/pgsync"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/envelope"
	"github.com/edgesync/edgesync/internal/testenv"
)

// waitTimeout bounds every wait of these tests. A test that works never
// waits for it.
const waitTimeout = 10 * time.Second

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

func newPool(t testing.TB, connString string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), connString)
	if err != nil {
		t.Fatalf("pgxpool.New: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// withParams returns connString with the query parameters of params set.
func withParams(t testing.TB, connString string, user string, params map[string]string) string {
	t.Helper()
	u, err := url.Parse(connString)
	if err != nil {
		t.Fatalf("parse %q: %v", connString, err)
	}
	if user != "" {
		u.User = url.User(user)
	}
	q := u.Query()
	for k, v := range params {
		q.Set(k, v)
	}
	u.RawQuery = q.Encode()
	return u.String()
}

func TestDriverConformance(t *testing.T) {
	connString := testenv.PostgresURL(t)
	pool := newPool(t, connString)
	t.Run("Pool", func(t *testing.T) {
		drivertest.RunDriverTests(t, func(tb testing.TB, channel string) edge.Sync {
			return pgsync.New(pgsync.Options{Pool: pool, Channel: channel})
		})
	})
	t.Run("ConnString", func(t *testing.T) {
		drivertest.RunDriverTests(t, func(tb testing.TB, channel string) edge.Sync {
			return pgsync.New(pgsync.Options{ConnString: connString, Channel: channel})
		})
	})
}

func TestRegistryConformance(t *testing.T) {
	pool := newPool(t, testenv.PostgresURL(t))
	drivertest.RunRegistryTests(t, func(tb testing.TB) edge.Registry {
		scope := testenv.Channel(tb)
		r, err := pgsync.NewRegistry(pgsync.RegistryOptions{Pool: pool, Channel: scope})
		if err != nil {
			tb.Fatalf("NewRegistry: %v", err)
		}
		tb.Cleanup(func() { deleteScope(tb, pool, scope) })
		return r
	})
}

// deleteScope deletes what a test left in the registry tables.
func deleteScope(t testing.TB, pool *pgxpool.Pool, scope string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if _, err := pool.Exec(ctx, "DELETE FROM edgesync_registry_conns WHERE scope_key = $1", pgsync.Key(scope)); err != nil {
		t.Errorf("deleting the connections of scope %q: %v", scope, err)
	}
}

// listener is a driver subscribed on its own, as a Hub would run it.
type listener struct {
	id      string
	driver  edge.Driver
	inbox   chan edge.Message
	reports *testenv.ErrorLog
}

func newListener(t testing.TB, opts pgsync.Options) *listener {
	t.Helper()
	l := &listener{id: edge.NewID(), inbox: make(chan edge.Message, 1024), reports: testenv.NewErrorLog()}
	d, err := pgsync.New(opts)(edge.Instance{ID: l.id, Report: l.reports.Report})
	if err != nil {
		t.Fatalf("building the driver: %v", err)
	}
	l.driver = d
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() {
		cancel()
		if err := d.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	if err := d.Subscribe(ctx, func(m edge.Message) { l.inbox <- m }); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	return l
}

// next returns the next message the listener receives.
func (l *listener) next(t testing.TB) edge.Message {
	t.Helper()
	select {
	case m := <-l.inbox:
		return m
	case <-time.After(waitTimeout):
		t.Fatalf("no message received in %v; reports: %v", waitTimeout, l.reports)
		return edge.Message{}
	}
}

func (l *listener) publish(t testing.TB, msgs ...edge.Message) {
	t.Helper()
	var err error
	if len(msgs) == 1 {
		err = l.driver.Publish(testCtx(t), msgs[0])
	} else {
		err = l.driver.(edge.BatchDriver).PublishBatch(testCtx(t), msgs)
	}
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
}

func sameMessage(a, b edge.Message) bool {
	return a.Namespace == b.Namespace && a.Topic == b.Topic && a.Data.Binary == b.Data.Binary && bytes.Equal(a.Data.Bytes, b.Data.Bytes)
}

func wantMessage(t testing.TB, got, want edge.Message) {
	t.Helper()
	if !sameMessage(got, want) {
		t.Fatalf("received %s, want %s", describe(got), describe(want))
	}
}

func describe(m edge.Message) string {
	data := fmt.Sprintf("%q", m.Data.Bytes)
	if len(data) > 60 {
		data = data[:60] + "…"
	}
	return fmt.Sprintf("{%q %q binary=%v %d bytes %s}", m.Namespace, m.Topic, m.Data.Binary, len(m.Data.Bytes), data)
}

func notify(t testing.TB, pool *pgxpool.Pool, channel, payload string) {
	t.Helper()
	if _, err := pool.Exec(testCtx(t), "SELECT pg_notify($1, $2)", channel, payload); err != nil {
		t.Fatalf("pg_notify: %v", err)
	}
}

func foreignEnvelope(t testing.TB, m edge.Message) string {
	t.Helper()
	env, err := envelope.Encode(edge.NewID(), m)
	if err != nil {
		t.Fatal(err)
	}
	return string(env)
}

func TestInvalidOptions(t *testing.T) {
	long := strings.Repeat("c", pgsync.MaxChannelLength+1)
	for _, tc := range []struct {
		name string
		opts pgsync.Options
		want string
	}{
		{"ChannelTooLong", pgsync.Options{ConnString: testenv.DefaultPostgresURL, Channel: long}, "63"},
		{"NoChannel", pgsync.Options{ConnString: testenv.DefaultPostgresURL}, "Channel"},
		{"NoPoolNorConnString", pgsync.Options{Channel: "c"}, "ConnString"},
		{"BadConnString", pgsync.Options{ConnString: "postgres://%zz", Channel: "c"}, "ConnString"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hub, err := edge.New(edge.Options{Sync: pgsync.New(tc.opts)})
			if err == nil {
				hub.Close()
				t.Fatal("edge.New succeeded, want an error")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("edge.New: %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
}

func TestLongestChannel(t *testing.T) {
	pool := newPool(t, testenv.PostgresURL(t))
	channel := testenv.Channel(t)
	channel += strings.Repeat("x", pgsync.MaxChannelLength-len(channel))
	a := newListener(t, pgsync.Options{Pool: pool, Channel: channel})
	b := newListener(t, pgsync.Options{Pool: pool, Channel: channel})
	msg := edge.Message{Namespace: "/n", Topic: "t", Data: edge.Text("on a 63-byte channel")}
	a.publish(t, msg)
	wantMessage(t, b.next(t), msg)
}

// endpoint is a peer held by a test Hub.
type endpoint struct{ ch chan edge.Data }

func (e *endpoint) Deliver(d edge.Data) {
	select {
	case e.ch <- d:
	default: // the test sees the loss as a missing message
	}
}

func (e *endpoint) Close(int, string) error { return nil }

func join(t testing.TB, hub *edge.Hub, namespace, topic string) (*edge.Member, *endpoint) {
	t.Helper()
	ep := &endpoint{ch: make(chan edge.Data, 1024)}
	m, err := hub.Join(edge.NewID(), namespace, ep)
	if err != nil {
		t.Fatalf("Join: %v", err)
	}
	if err := m.Subscribe(topic); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	return m, ep
}

func (e *endpoint) next(t testing.TB) edge.Data {
	t.Helper()
	return testenv.Recv(t, e.ch, waitTimeout, "a delivery")
}

func newHub(t testing.TB, sync edge.Sync) (*edge.Hub, *testenv.ErrorLog) {
	t.Helper()
	rep := testenv.NewErrorLog()
	hub, err := edge.New(edge.Options{Sync: sync, OnError: rep.OnError})
	if err != nil {
		t.Fatalf("edge.New: %v", err)
	}
	t.Cleanup(func() { hub.Close() })
	return hub, rep
}

func TestLargeMessages(t *testing.T) {
	pool := newPool(t, testenv.PostgresURL(t))
	channel := testenv.Channel(t)
	a, aReports := newHub(t, pgsync.New(pgsync.Options{Pool: pool, Channel: channel}))
	b, bReports := newHub(t, pgsync.New(pgsync.Options{Pool: pool, Channel: channel}))
	_, ep := join(t, b, "/big", "t")
	t.Cleanup(func() { deletePayloads(t, pool, channel) })

	binary := make([]byte, 100<<10)
	for i := range binary {
		binary[i] = byte(i * 7)
	}
	text := strings.Repeat("héllo 🌍 \"q\" \n", (100<<10)/18)

	// Bodies whose envelopes are one byte under the NOTIFY limit, and at it.
	base, _ := envelope.Encode(a.ID(), edge.Message{Namespace: "/big", Topic: "t", Data: edge.Text("")})
	under := strings.Repeat("u", pgsync.NotifyPayloadLimit-1-len(base))
	at := strings.Repeat("a", pgsync.NotifyPayloadLimit-len(base))

	sent := []edge.Data{edge.Binary(binary), edge.Text(text), edge.Text(under), edge.Text(at)}
	for _, d := range sent {
		if err := a.Publish(testCtx(t), edge.Message{Namespace: "/big", Topic: "t", Data: d}); err != nil {
			t.Fatalf("Publish: %v", err)
		}
		got := ep.next(t)
		if got.Binary != d.Binary || !bytes.Equal(got.Bytes, d.Bytes) {
			t.Fatalf("received %d bytes (binary %v), want %d bytes (binary %v)", len(got.Bytes), got.Binary, len(d.Bytes), d.Binary)
		}
	}
	var stored int
	if err := pool.QueryRow(testCtx(t), "SELECT count(*) FROM edgesync_payloads WHERE channel = $1", channel).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if stored != 3 {
		t.Errorf("%d payloads stored, want 3 (all but the one under the NOTIFY limit)", stored)
	}
	for _, r := range []*testenv.ErrorLog{aReports, bReports} {
		if r.Count(testenv.AnyStage) > 0 {
			t.Errorf("reported: %v", r)
		}
	}
}

func deletePayloads(t testing.TB, pool *pgxpool.Pool, channels ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if _, err := pool.Exec(ctx, "DELETE FROM edgesync_payloads WHERE channel = any($1)", channels); err != nil {
		t.Errorf("deleting payloads: %v", err)
	}
}

func TestPublishBatch(t *testing.T) {
	pool := newPool(t, testenv.PostgresURL(t))
	channel := testenv.Channel(t)
	a := newListener(t, pgsync.Options{Pool: pool, Channel: channel})
	b := newListener(t, pgsync.Options{Pool: pool, Channel: channel})
	t.Cleanup(func() { deletePayloads(t, pool, channel) })

	// Postgres merges identical notifications of one transaction: the
	// batch must not lose its repeats.
	same := edge.Message{Namespace: "/n", Topic: "t", Data: edge.Text("again")}
	big := edge.Message{Namespace: "/n", Topic: "t", Data: edge.Text(strings.Repeat("b", 3*pgsync.NotifyPayloadLimit))}
	other := edge.Message{Namespace: "/n", Topic: "t", Data: edge.Binary([]byte{0, 1, 2})}
	// One byte under the NOTIFY limit: the mark of its repeat takes it over.
	base, _ := envelope.Encode(edge.NewID(), edge.Message{Namespace: "/n", Topic: "t", Data: edge.Text("")})
	near := edge.Message{Namespace: "/n", Topic: "t", Data: edge.Text(strings.Repeat("n", pgsync.NotifyPayloadLimit-1-len(base)))}
	batch := []edge.Message{same, big, same, other, same, big, near, near}
	a.publish(t, batch...)

	counts := map[string]int{}
	for range batch {
		m := b.next(t)
		counts[describe(m)]++
	}
	for _, m := range batch {
		counts[describe(m)]--
	}
	for m, n := range counts {
		if n != 0 {
			t.Errorf("%s received %+d times more than sent", m, n)
		}
	}
}

func TestMaxMessageBytesOutbound(t *testing.T) {
	pool := newPool(t, testenv.PostgresURL(t))
	channel := testenv.Channel(t)
	a := newListener(t, pgsync.Options{Pool: pool, Channel: channel, MaxMessageBytes: 1000})
	b := newListener(t, pgsync.Options{Pool: pool, Channel: channel})
	tooBig := edge.Message{Namespace: "/n", Topic: "t", Data: edge.Text(strings.Repeat("x", 1000))}
	fits := edge.Message{Namespace: "/n", Topic: "t", Data: edge.Text("fits")}
	if err := a.driver.Publish(testCtx(t), tooBig); err == nil || !strings.Contains(err.Error(), "MaxMessageBytes") {
		t.Errorf("Publish of a message over MaxMessageBytes: %v, want an error naming MaxMessageBytes", err)
	}
	err := a.driver.(edge.BatchDriver).PublishBatch(testCtx(t), []edge.Message{tooBig, fits})
	if err == nil || !strings.Contains(err.Error(), "MaxMessageBytes") {
		t.Errorf("PublishBatch with a message over MaxMessageBytes: %v, want an error naming MaxMessageBytes", err)
	}
	wantMessage(t, b.next(t), fits)
}

func TestRetention(t *testing.T) {
	pool := newPool(t, testenv.PostgresURL(t))
	channel, otherChannel := testenv.Channel(t), testenv.Channel(t)
	rep := testenv.NewErrorLog()
	d, err := pgsync.New(pgsync.Options{Pool: pool, Channel: channel, LargePayloadRetention: time.Hour})(
		edge.Instance{ID: edge.NewID(), Report: rep.Report})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	t.Cleanup(func() { deletePayloads(t, pool, channel, otherChannel) })
	ctx := testCtx(t)
	big := edge.Message{Namespace: "/n", Topic: "t", Data: edge.Text(strings.Repeat("b", pgsync.NotifyPayloadLimit))}
	publish := func() {
		t.Helper()
		if err := d.Publish(ctx, big); err != nil {
			t.Fatalf("Publish: %v", err)
		}
	}
	count := func(channel, age string) int {
		t.Helper()
		var n int
		err := pool.QueryRow(ctx, "SELECT count(*) FROM edgesync_payloads WHERE channel = $1 AND created_at < now() - $2::interval", channel, age).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	publish() // creates the table and stores one row
	if _, err := pool.Exec(ctx, `INSERT INTO edgesync_payloads (channel, body, created_at)
		VALUES ($1, 'old', now() - interval '2 hours'), ($2, 'old, other channel', now() - interval '2 hours')`,
		channel, otherChannel); err != nil {
		t.Fatal(err)
	}
	n, err := pgsync.Cleanup(ctx, d)
	if err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	if n != 1 || count(channel, "0s") != 1 || count(otherChannel, "1 hour") != 1 {
		t.Errorf("cleanup deleted %d rows, left %d of the channel and %d old of another channel; want 1, 1, 1",
			n, count(channel, "0s"), count(otherChannel, "1 hour"))
	}

	if errs := rep.Errors(edge.StagePublish); len(errs) > 0 {
		t.Errorf("reported: %q", errs)
	}
}

func TestDroppedNotifications(t *testing.T) {
	pool := newPool(t, testenv.PostgresURL(t))
	channel := testenv.Channel(t)
	l := newListener(t, pgsync.Options{Pool: pool, Channel: channel, MaxMessageBytes: 1000})

	ownEcho, _ := envelope.Encode(l.id, edge.Message{Namespace: "/n", Topic: "t", Data: edge.Text("echo")})
	bad := []string{
		"hello",
		`{"foo":"bar"}`,
		`[1,2,3]`,
		`{"id":"a","msg":{"namespace":"/n","topic":"t","binary":true,"data":"not base64!"}}`,
		`{"edgesync":"ref","id":"x","ref":"abc"}`,
		`{"edgesync":"ref","id":"x","ref":9223372036854775807,"token":"AAAAAAAAAAAAAAAAAAAAAA"}`,
		foreignEnvelope(t, edge.Message{Namespace: "/n", Topic: "t", Data: edge.Text(strings.Repeat("o", 1000))}),
	}
	for _, p := range bad {
		notify(t, pool, channel, p)
	}
	notify(t, pool, channel, string(ownEcho))
	valid := edge.Message{Namespace: "/n", Topic: "t", Data: edge.Text("still flowing")}
	notify(t, pool, channel, foreignEnvelope(t, valid))

	// Notifications arrive in order: once the valid one is delivered,
	// every bad one has been handled.
	wantMessage(t, l.next(t), valid)
	errs := l.reports.Errors(edge.StageDelivery)
	if len(errs) != len(bad) {
		t.Fatalf("%d reports at stage delivery, want %d: %q", len(errs), len(bad), errs)
	}
	for i, err := range errs[:5] {
		if !errors.Is(err, envelope.ErrMalformed) {
			t.Errorf("report for %q: %v, want one wrapping envelope.ErrMalformed", bad[i], err)
		}
	}
	if !strings.Contains(errs[5].Error(), "gone") && !strings.Contains(errs[5].Error(), "does not exist") {
		t.Errorf("report for a dangling reference: %v", errs[5])
	}
	if !strings.Contains(errs[6].Error(), "MaxMessageBytes") {
		t.Errorf("report for an oversized notification: %v, want one naming MaxMessageBytes", errs[6])
	}
	if n := l.reports.Count(edge.StageSubscribe); n != 0 {
		t.Errorf("%d reports at stage subscribe, want none", n)
	}
	select {
	case m := <-l.inbox:
		t.Errorf("also received %s", describe(m))
	default:
	}
	l.publish(t, valid) // the listener is still healthy
}

func TestCrosswsInterop(t *testing.T) {
	vectors := testenv.CrosswsVectors(t)
	connString := testenv.PostgresURL(t)
	pool := newPool(t, connString)
	channel := testenv.Channel(t)
	l := newListener(t, pgsync.Options{Pool: pool, Channel: channel})

	// A raw listener plays the crossws instance.
	ctx := testCtx(t)
	node, err := pgx.Connect(ctx, connString)
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close(ctx)
	if _, err := node.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	// nodeNext returns the next payload the listener published, skipping
	// the notifications this test sends itself and the listener's probes.
	nodeNext := func(t *testing.T) string {
		t.Helper()
		for {
			n, err := node.WaitForNotification(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(n.Payload, l.id) && !strings.HasPrefix(n.Payload, `{"edgesync":"probe",`) {
				return n.Payload
			}
		}
	}

	for _, vec := range vectors.Encode {
		t.Run(vec.Name, func(t *testing.T) {
			want := vec.Message

			// crossws → edgesync
			notify(t, pool, channel, vec.Wire)
			wantMessage(t, l.next(t), want)

			// edgesync → crossws: the same JSON but for the id.
			l.publish(t, want)
			payload := nodeNext(t)
			var got, wire map[string]any
			if err := json.Unmarshal([]byte(payload), &got); err != nil {
				t.Fatalf("payload %q: %v", payload, err)
			}
			if err := json.Unmarshal([]byte(vec.Wire), &wire); err != nil {
				t.Fatal(err)
			}
			wire["id"] = l.id
			gotJSON, _ := json.Marshal(got)
			wantJSON, _ := json.Marshal(wire)
			if !bytes.Equal(gotJSON, wantJSON) {
				t.Errorf("published %s\nwant      %s", gotJSON, wantJSON)
			}
		})
	}

	// A large message reaches crossws as a reference it drops as malformed.
	big := edge.Message{Namespace: "/n", Topic: "t", Data: edge.Text(strings.Repeat("l", pgsync.NotifyPayloadLimit))}
	t.Cleanup(func() { deletePayloads(t, pool, channel) })
	l.publish(t, big)
	if ref := nodeNext(t); !strings.HasPrefix(ref, `{"edgesync":"ref",`) {
		t.Errorf("a large message was published as %.100q…, want a reference", ref)
	} else if _, _, err := envelope.Decode([]byte(ref)); !errors.Is(err, envelope.ErrMalformed) {
		t.Errorf("reference %q decodes as an envelope (err %v); crossws would misread it", ref, err)
	}
}

// listenerPID returns the backend pid of the connection listening on channel.
func listenerPID(t testing.TB, pool *pgxpool.Pool, channel string) (pid int) {
	t.Helper()
	err := pool.QueryRow(testCtx(t), `SELECT pid FROM pg_stat_activity
		WHERE application_name = $1 AND query LIKE '%LISTEN ' || $2`,
		pgsync.ListenApplicationName, pgx.Identifier{channel}.Sanitize()).Scan(&pid)
	if err != nil {
		t.Fatalf("finding the listening connection: %v", err)
	}
	return pid
}

func TestReconnect(t *testing.T) {
	connString := testenv.PostgresURL(t)
	pool := newPool(t, connString)
	for _, mode := range []string{"Pool", "ConnString"} {
		t.Run(mode, func(t *testing.T) {
			channel := testenv.Channel(t)
			opts := pgsync.Options{Pool: pool, Channel: channel}
			if mode == "ConnString" {
				opts = pgsync.Options{ConnString: connString, Channel: channel}
			}
			hub, rep := newHub(t, pgsync.New(opts))
			_, ep := join(t, hub, "/n", "t")

			probe := func(text string) {
				notify(t, pool, channel, foreignEnvelope(t, edge.Message{Namespace: "/n", Topic: "t", Data: edge.Text(text)}))
			}
			probe("before")
			if got := ep.next(t); got.String() != "before" {
				t.Fatalf("received %q, want %q", got.String(), "before")
			}

			pid := listenerPID(t, pool, channel)
			if _, err := pool.Exec(testCtx(t), "SELECT pg_terminate_backend($1)", pid); err != nil {
				t.Fatal(err)
			}
			rep.Await(t, edge.StageSubscribe, 0, waitTimeout)

			// Publish probes until one arrives: what is published while
			// nobody listens is lost, by design.
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			deadline := time.After(waitTimeout)
			for i := 0; ; i++ {
				probe(fmt.Sprintf("probe %d", i))
				select {
				case <-ep.ch:
				case <-tick.C:
					continue
				case <-deadline:
					t.Fatalf("no message after the listener was terminated; reports: %v", rep)
				}
				break
			}
			probe("after")
			for got := ep.next(t); got.String() != "after"; got = ep.next(t) {
			}
			if newPID := listenerPID(t, pool, channel); newPID == pid {
				t.Errorf("the listening connection is still pid %d", pid)
			}
			if errs := rep.Errors(edge.StageSubscribe); len(errs) != 1 {
				t.Errorf("%d reports at stage subscribe, want 1 for one outage: %q", len(errs), errs)
			}
		})
	}
}

func TestUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	connString := "postgres://postgres@" + addr + "/test?sslmode=disable&connect_timeout=5"

	rep := testenv.NewErrorLog()
	hub, err := edge.New(edge.Options{Sync: pgsync.New(pgsync.Options{ConnString: connString, Channel: "unreachable"}), OnError: rep.OnError})
	if err != nil {
		t.Fatalf("edge.New: %v, want a Hub that delivers locally", err)
	}
	err = rep.Await(t, edge.StageSubscribe, 0, waitTimeout)
	if !strings.Contains(err.Error(), addr) && !strings.Contains(err.Error(), "refused") {
		t.Logf("subscribe error: %v", err)
	}

	_, ep := join(t, hub, "/n", "t")
	sender, _ := join(t, hub, "/n", "other")
	if err := sender.Publish(testCtx(t), "t", edge.Text("local")); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if got := ep.next(t); got.String() != "local" {
		t.Errorf("received %q, want %q", got.String(), "local")
	}
	rep.Await(t, edge.StagePublish, 0, waitTimeout) // the relay failed, and said so
	if err := hub.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}

func TestUserPoolStaysOpen(t *testing.T) {
	pool := newPool(t, testenv.PostgresURL(t))
	channel := testenv.Channel(t)
	a, _ := newHub(t, pgsync.New(pgsync.Options{Pool: pool, Channel: channel}))
	b, _ := newHub(t, pgsync.New(pgsync.Options{Pool: pool, Channel: channel}))
	_, ep := join(t, b, "/n", "t")
	if err := a.Publish(testCtx(t), edge.Message{Namespace: "/n", Topic: "t", Data: edge.Text("x")}); err != nil {
		t.Fatal(err)
	}
	ep.next(t)
	for _, h := range []*edge.Hub{a, b} {
		if err := h.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
	}
	var one int
	if err := pool.QueryRow(testCtx(t), "SELECT 1").Scan(&one); err != nil {
		t.Fatalf("the user's pool after the hubs closed: %v", err)
	}
}

// restrictedSchema creates a schema and a login role that may use it but not
// create anything in it, and returns their name; both are dropped when t ends.
func restrictedSchema(t *testing.T, pool *pgxpool.Pool) string {
	t.Helper()
	name := strings.ReplaceAll(testenv.Channel(t), "-", "_")
	ident := pgx.Identifier{name}.Sanitize()
	ctx := testCtx(t)
	for _, stmt := range []string{
		"CREATE ROLE " + ident + " LOGIN",
		"CREATE SCHEMA " + ident,
		"GRANT USAGE ON SCHEMA " + ident + " TO " + ident,
	} {
		if _, err := pool.Exec(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		for _, stmt := range []string{"DROP SCHEMA " + ident + " CASCADE", "DROP ROLE " + ident} {
			if _, err := pool.Exec(ctx, stmt); err != nil {
				t.Errorf("%s: %v", stmt, err)
			}
		}
	})
	return name
}

func TestLargeMessageWithoutCreatePrivilege(t *testing.T) {
	connString := testenv.PostgresURL(t)
	admin := newPool(t, connString)
	schema := restrictedSchema(t, admin)
	channel := testenv.Channel(t)
	// Both instances look for the payload table in the schema only.
	restricted := newPool(t, withParams(t, connString, schema, map[string]string{"search_path": schema}))
	owner := newPool(t, withParams(t, connString, "", map[string]string{"search_path": schema}))

	a, aReports := newHub(t, pgsync.New(pgsync.Options{Pool: restricted, Channel: channel}))
	b, _ := newHub(t, pgsync.New(pgsync.Options{Pool: owner, Channel: channel}))
	_, ep := join(t, b, "/n", "t")
	big := edge.Message{Namespace: "/n", Topic: "t", Data: edge.Text(strings.Repeat("L", 20000))}
	small := edge.Message{Namespace: "/n", Topic: "t", Data: edge.Text("small")}

	if err := a.Publish(testCtx(t), big); err != nil {
		t.Fatal(err)
	}
	msg := aReports.Await(t, edge.StagePublish, 0, waitTimeout).Error()
	for _, want := range []string{"8000", "permission denied", "Migrate", "GRANT CREATE"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not mention %q", msg, want)
		}
	}
	if err := a.Publish(testCtx(t), small); err != nil {
		t.Fatal(err)
	}
	if got := ep.next(t); got.String() != "small" {
		t.Fatalf("received %q, want the small message", got.String())
	}

	// Once an owner has migrated and granted, the same role can.
	if err := pgsync.Migrate(testCtx(t), owner); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	ident := pgx.Identifier{schema}.Sanitize()
	for _, stmt := range []string{
		"GRANT INSERT, SELECT, DELETE ON " + ident + ".edgesync_payloads TO " + ident,
		"GRANT USAGE ON SEQUENCE " + ident + ".edgesync_payloads_id_seq TO " + ident,
	} {
		if _, err := admin.Exec(testCtx(t), stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	if err := a.Publish(testCtx(t), big); err != nil {
		t.Fatal(err)
	}
	if got := ep.next(t); got.String() != big.Data.String() {
		t.Fatalf("received %d bytes, want the large message", len(got.Bytes))
	}
	if errs := aReports.Errors(edge.StagePublish); len(errs) != 1 {
		t.Errorf("reports at stage publish: %q, want only the first", errs)
	}
}

func TestConcurrentMigrations(t *testing.T) {
	connString := testenv.PostgresURL(t)
	admin := newPool(t, connString)
	schema := restrictedSchema(t, admin) // owned by the admin: empty, creatable
	pool := newPool(t, withParams(t, connString, "", map[string]string{"search_path": schema}))
	ctx := testCtx(t)
	const n = 8
	var wg sync.WaitGroup
	errc := make(chan error, 2*n)
	for i := range n {
		wg.Go(func() {
			r, err := pgsync.NewRegistry(pgsync.RegistryOptions{Pool: pool, Channel: "migrations"})
			if err != nil {
				errc <- err
				return
			}
			// First use creates the tables.
			errc <- r.Add(ctx, edge.Conn{ID: fmt.Sprint("conn-", i), Namespace: "/n"})
		})
		wg.Go(func() { errc <- pgsync.Migrate(ctx, pool) })
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			t.Error(err)
		}
	}
	var tables int
	err := admin.QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE schemaname = $1`, schema).Scan(&tables)
	if err != nil || tables != 3 {
		t.Errorf("%d tables in the schema (err %v), want 3", tables, err)
	}
}

func TestRegistryPages(t *testing.T) {
	// One connection: Subscribers must hold none while each runs.
	pool := newPool(t, withParams(t, testenv.PostgresURL(t), "", map[string]string{"pool_max_conns": "1"}))
	scope := testenv.Channel(t)
	r, err := pgsync.NewRegistry(pgsync.RegistryOptions{Pool: pool, Channel: scope})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deleteScope(t, pool, scope) })
	pgsync.SetPageSize(r, 2)
	ctx := testCtx(t)
	var want []string
	for i := range 7 {
		c := edge.Conn{ID: fmt.Sprint("conn-", i), Namespace: fmt.Sprint("/ns", i%2)}
		if err := r.Add(ctx, c); err != nil {
			t.Fatal(err)
		}
		if err := r.Subscribe(ctx, c.ID, "topic"); err != nil {
			t.Fatal(err)
		}
		want = append(want, c.ID)
	}
	var got []string
	err = r.Subscribers(ctx, "", "topic", func(id string) bool {
		got = append(got, id)
		if _, err := r.Get(ctx, id); err != nil {
			t.Errorf("Get(%q) from within Subscribers: %v", id, err)
		}
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got) // pages follow the digests of the ids
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Subscribers = %q, want %q", got, want)
	}

	// An expired connection is skipped, then pruned.
	if err := r.Add(ctx, edge.Conn{ID: "conn-3", Namespace: "/ns1", ExpiresAt: time.Now().Add(-time.Minute)}); err != nil {
		t.Fatal(err)
	}
	got = got[:0]
	if err := r.Subscribers(ctx, "/ns1", "topic", func(id string) bool { got = append(got, id); return true }); err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	if fmt.Sprint(got) != "[conn-1 conn-5]" {
		t.Errorf("Subscribers(/ns1) = %q, want [conn-1 conn-5]", got)
	}
	if _, err := pgsync.Prune(ctx, r); err != nil {
		t.Fatal(err)
	}
	var left int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM edgesync_registry_conns WHERE scope_key = $1 AND id_key = $2",
		pgsync.Key(scope), pgsync.Key("conn-3")).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Errorf("an expired connection is left after pruning")
	}
}

func TestPingWhenQuiet(t *testing.T) {
	pool := newPool(t, testenv.PostgresURL(t))
	channel := testenv.Channel(t)
	build, pings := pgsync.SetProbeTiming(pgsync.New(pgsync.Options{Pool: pool, Channel: channel}), time.Millisecond, waitTimeout)
	hub, rep := newHub(t, build)
	_, ep := join(t, hub, "/n", "t")
	// Pinging between notifications loses none of them.
	for i := range 20 {
		text := fmt.Sprint("message ", i)
		notify(t, pool, channel, foreignEnvelope(t, edge.Message{Namespace: "/n", Topic: "t", Data: edge.Text(text)}))
		if got := ep.next(t); got.String() != text {
			t.Fatalf("received %q, want %q", got.String(), text)
		}
	}
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	deadline := time.After(waitTimeout)
	for pings() == 0 {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatal("the quiet listener never pinged")
		}
	}
	if rep.Count(testenv.AnyStage) > 0 {
		t.Errorf("reported: %v", rep)
	}
}
