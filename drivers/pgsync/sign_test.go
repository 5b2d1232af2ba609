package pgsync_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/edgesync/edgesync/drivers/pgsync"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/envelope"
	"github.com/edgesync/edgesync/internal/testenv"
)

var (
	keyOld   = []byte("old key of the test cluster, 32 bytes or more")
	keyNew   = []byte("new key of the test cluster, 32 bytes or more")
	keyOther = []byte("a key that no instance of the cluster accepts")
)

// rawListener LISTENs on channel on a connection of its own, as a stranger
// with access to the server would, and returns the next notification that
// holds want.
func rawListener(t *testing.T, connString, channel string) (next func(want string) string) {
	t.Helper()
	ctx := testCtx(t)
	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	return func(want string) string {
		t.Helper()
		for {
			n, err := conn.WaitForNotification(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(n.Payload, want) {
				return n.Payload
			}
		}
	}
}

// countErrors counts the errors of log at StageDelivery that wrap target.
func countErrors(log *testenv.ErrorLog, target error) int {
	n := 0
	for _, err := range log.Errors(edge.StageDelivery) {
		if errors.Is(err, target) {
			n++
		}
	}
	return n
}

func bigMessage(text string) edge.Message {
	return edge.Message{Namespace: "/n", Topic: "t", Data: edge.Text(text + strings.Repeat("L", 2*pgsync.NotifyPayloadLimit))}
}

// In a signed cluster, hubs exchange small and large messages across a key
// rotation; envelopes and references that a stranger notifies, unsigned or
// signed with another key, and the messages of an unsigned hub reach nobody
// and are reported.
func TestSignedCluster(t *testing.T) {
	connString := testenv.PostgresURL(t)
	pool := newPool(t, connString)
	channel := testenv.Channel(t)
	t.Cleanup(func() { deletePayloads(t, pool, channel) })
	opts := func(keys ...[]byte) pgsync.Options {
		return pgsync.Options{Pool: pool, Channel: channel, Keys: keys}
	}
	stranger := rawListener(t, connString, channel)
	a, aLog := newHub(t, pgsync.New(opts(keyOld)))         // not rotated yet
	b, bLog := newHub(t, pgsync.New(opts(keyOld, keyNew))) // rotation, step 1
	c, _ := newHub(t, pgsync.New(opts(keyNew, keyOld)))    // step 2: signs with the new key
	unsigned, _ := newHub(t, pgsync.New(pgsync.Options{Pool: pool, Channel: channel}))
	_, atA := join(t, a, "/n", "t")
	_, atB := join(t, b, "/n", "t")
	_, atC := join(t, c, "/n", "t")

	// What the signed hubs publish, which their own members also receive.
	legit := map[string]bool{}
	send := func(h *edge.Hub, m edge.Message) {
		t.Helper()
		if h != unsigned {
			legit[m.Data.String()] = true
		}
		if err := h.Publish(testCtx(t), m); err != nil {
			t.Fatalf("Publish: %v", err)
		}
	}
	small := func(text string) edge.Message {
		return edge.Message{Namespace: "/n", Topic: "t", Data: edge.Text(text)}
	}
	expect := func(ep *endpoint, m edge.Message) {
		t.Helper()
		for {
			got := ep.next(t).String()
			if got == m.Data.String() {
				return
			}
			if !legit[got] {
				t.Fatalf("received %.40q…, want %.40q…", got, m.Data.String())
			}
		}
	}

	send(a, small("from a"))
	expect(atB, small("from a"))
	expect(atC, small("from a"))
	fromC := bigMessage("from c")
	send(c, fromC) // signed with the new key: b accepts it, a does not yet
	expect(atB, fromC)
	ref := stranger(`"edgesync":"ref"`)
	if !strings.Contains(ref, `"sig":"`) {
		t.Fatalf("reference %s is not signed", ref)
	}
	if err := aLog.Await(t, edge.StageDelivery, 0, waitTimeout); !errors.Is(err, envelope.ErrSignature) {
		t.Fatalf("a reported %v for c's reference; want ErrSignature", err)
	}
	fromB := bigMessage("from b")
	send(b, fromB)
	expect(atA, fromB)
	expect(atC, fromB)

	// A stranger's envelopes and references, unsigned or signed with
	// another key, and an unsigned hub's message.
	_, row, token, err := pgsync.ParseReference([]byte(ref))
	if err != nil {
		t.Fatal(err)
	}
	other, _ := envelope.NewSigner(channel, [][]byte{keyOther})
	forged := edge.Message{Namespace: "", Topic: "t", Data: edge.Text("forged")}
	plainEnv, _ := envelope.Encode(edge.NewID(), forged)
	wrongEnv, _ := other.Encode(edge.NewID(), forged)
	plainRef := fmt.Sprintf(`{"edgesync":"ref","id":%q,"ref":%d,"token":%q}`, edge.NewID(), row, token)
	wrongRef, _ := other.Sign([]byte(plainRef), 0)
	for _, p := range []string{string(plainEnv), string(wrongEnv), plainRef, string(wrongRef)} {
		notify(t, pool, channel, p)
	}
	send(unsigned, small("from an unsigned hub"))
	for _, l := range []struct {
		name string
		log  *testenv.ErrorLog
		n    int
	}{{"a", aLog, 6}, {"b", bLog, 5}} {
		l.log.Await(t, edge.StageDelivery, l.n-1, waitTimeout)
		if got := countErrors(l.log, envelope.ErrSignature); got != l.n {
			t.Errorf("%s reported %d signature errors: %v; want %d", l.name, got, l.log, l.n)
		}
	}
	// Notifications arrive in order: what came before is handled.
	send(b, small("last"))
	expect(atA, small("last"))
	expect(atC, small("last"))
	for name, ep := range map[string]*endpoint{"a": atA, "b": atB, "c": atC} {
		for len(ep.ch) > 0 {
			if got := (<-ep.ch).String(); !legit[got] {
				t.Errorf("%s also received %.40q", name, got)
			}
		}
	}
}

// A reference is resolved only with the token of its row, once, and only
// while the row is younger than the retention period.
func TestForgedReferences(t *testing.T) {
	connString := testenv.PostgresURL(t)
	pool := newPool(t, connString)
	channel := testenv.Channel(t)
	t.Cleanup(func() { deletePayloads(t, pool, channel) })
	stranger := rawListener(t, connString, channel)
	a := newListener(t, pgsync.Options{Pool: pool, Channel: channel})
	b := newListener(t, pgsync.Options{Pool: pool, Channel: channel})

	genuine := bigMessage("genuine")
	a.publish(t, genuine)
	wantMessage(t, b.next(t), genuine)
	ref := stranger(`"edgesync":"ref"`)
	_, row, token, err := pgsync.ParseReference([]byte(ref))
	if err != nil {
		t.Fatalf("ParseReference(%s): %v", ref, err)
	}
	if len(token) < 22 {
		t.Fatalf("token %q: fewer than 128 bits", token)
	}

	// Rows a stranger stored, with a token it knows: a fresh one and an
	// expired one.
	ctx := testCtx(t)
	store := func(m edge.Message, token, age string) int64 {
		t.Helper()
		env, _ := envelope.Encode(edge.NewID(), m)
		var id int64
		err := pool.QueryRow(ctx, `INSERT INTO edgesync_payloads (channel, body, token, created_at)
			VALUES ($1, $2, $3, now() - $4::interval) RETURNING id`, channel, env, token, age).Scan(&id)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	const known = "c3RyYW5nZXItdG9rZW4xMg"
	fresh := bigMessage("fresh")
	freshRow := store(fresh, known, "0s")
	expiredRow := store(bigMessage("expired"), known, "2 minutes") // DefaultLargePayloadRetention is 1 minute
	reference := func(row int64, token string) string {
		return fmt.Sprintf(`{"edgesync":"ref","id":%q,"ref":%d,"token":%q}`, edge.NewID(), row, token)
	}
	for _, p := range []string{
		fmt.Sprintf(`{"edgesync":"ref","id":%q,"ref":%d}`, edge.NewID(), row), // no token
		reference(row, "AAAAAAAAAAAAAAAAAAAAAA"),                              // a wrong token
		ref,                                                                   // replayed
		reference(expiredRow, known),                                          // expired
		reference(freshRow, known),                                            // valid: delivered
	} {
		notify(t, pool, channel, p)
	}
	wantMessage(t, b.next(t), fresh)
	errs := b.reports.Errors(edge.StageDelivery)
	want := []string{"token", "forged", "replayed", "older than LargePayloadRetention"}
	if len(errs) != len(want) {
		t.Fatalf("b reported %q; want %d drops", errs, len(want))
	}
	for i, w := range want {
		if !strings.Contains(errs[i].Error(), w) {
			t.Errorf("report %d: %v; want it to say %q", i, errs[i], w)
		}
	}
	if !errors.Is(errs[0], envelope.ErrMalformed) {
		t.Errorf("report for a reference without a token: %v; want ErrMalformed", errs[0])
	}
	select {
	case m := <-b.inbox:
		t.Errorf("also received %s", describe(m))
	default:
	}
}

// A stored large message larger than the receiver's MaxMessageBytes is not
// read, and is reported.
func TestMaxMessageBytesInboundLarge(t *testing.T) {
	pool := newPool(t, testenv.PostgresURL(t))
	channel := testenv.Channel(t)
	t.Cleanup(func() { deletePayloads(t, pool, channel) })
	a := newListener(t, pgsync.Options{Pool: pool, Channel: channel})
	b := newListener(t, pgsync.Options{Pool: pool, Channel: channel, MaxMessageBytes: 3 * pgsync.NotifyPayloadLimit})
	a.publish(t, bigMessage(strings.Repeat("x", 3*pgsync.NotifyPayloadLimit)))
	fits := bigMessage("fits")
	a.publish(t, fits)
	wantMessage(t, b.next(t), fits)
	errs := b.reports.Errors(edge.StageDelivery)
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "MaxMessageBytes") {
		t.Errorf("b reported %q; want one drop naming MaxMessageBytes", errs)
	}
}

// The rows a publisher stores are deleted soon after the retention period,
// without another publish.
func TestRowsAreDeletedAfterRetention(t *testing.T) {
	pool := newPool(t, testenv.PostgresURL(t))
	channel := testenv.Channel(t)
	t.Cleanup(func() { deletePayloads(t, pool, channel) })
	rep := testenv.NewErrorLog()
	d, err := pgsync.New(pgsync.Options{Pool: pool, Channel: channel, LargePayloadRetention: 200 * time.Millisecond})(
		edge.Instance{ID: edge.NewID(), Report: rep.Report})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	cleaned := make(chan int64, 16)
	pgsync.OnCleanup(d, func(n int64, err error) {
		if err != nil {
			t.Errorf("cleanup: %v", err)
		}
		cleaned <- n
	})
	for range 2 {
		if err := d.Publish(testCtx(t), bigMessage("stored")); err != nil {
			t.Fatal(err)
		}
	}
	for deleted := int64(0); deleted < 2; {
		deleted += testenv.Recv(t, cleaned, waitTimeout, "a cleanup")
	}
	var left int
	if err := pool.QueryRow(testCtx(t), "SELECT count(*) FROM edgesync_payloads WHERE channel = $1", channel).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Errorf("%d rows left after the cleanup", left)
	}
	if n := rep.Count(testenv.AnyStage); n > 0 {
		t.Errorf("reported: %v", rep)
	}
}

// A payload table of an earlier version, without tokens, is upgraded by the
// first large publish, and by Migrate.
func TestMigrateUpgradesTable(t *testing.T) {
	connString := testenv.PostgresURL(t)
	admin := newPool(t, connString)
	for _, migrate := range []bool{false, true} {
		t.Run(fmt.Sprintf("Migrate=%v", migrate), func(t *testing.T) {
			schema := restrictedSchema(t, admin)
			owner := newPool(t, withParams(t, connString, "", map[string]string{"search_path": schema}))
			ctx := testCtx(t)
			if _, err := owner.Exec(ctx, `CREATE TABLE edgesync_payloads (
				id bigserial PRIMARY KEY, channel text NOT NULL, body text NOT NULL,
				created_at timestamptz NOT NULL DEFAULT now())`); err != nil {
				t.Fatal(err)
			}
			if migrate {
				if err := pgsync.Migrate(ctx, owner); err != nil {
					t.Fatalf("Migrate: %v", err)
				}
			}
			channel := testenv.Channel(t)
			a := newListener(t, pgsync.Options{Pool: owner, Channel: channel})
			b := newListener(t, pgsync.Options{Pool: owner, Channel: channel})
			big := bigMessage("after the upgrade")
			a.publish(t, big)
			wantMessage(t, b.next(t), big)
			if n := a.reports.Count(testenv.AnyStage); n > 0 {
				t.Errorf("reported: %v", a.reports)
			}
		})
	}
}

// A signed batch keeps its repeats (marked, then signed) and its large
// messages.
func TestSignedBatch(t *testing.T) {
	pool := newPool(t, testenv.PostgresURL(t))
	channel := testenv.Channel(t)
	t.Cleanup(func() { deletePayloads(t, pool, channel) })
	a := newListener(t, pgsync.Options{Pool: pool, Channel: channel, Keys: [][]byte{keyOld}})
	b := newListener(t, pgsync.Options{Pool: pool, Channel: channel, Keys: [][]byte{keyOld}})
	same := edge.Message{Namespace: "/n", Topic: "t", Data: edge.Text("again")}
	big := bigMessage("big")
	batch := []edge.Message{same, big, same, same, big}
	a.publish(t, batch...)
	counts := map[string]int{}
	for range batch {
		counts[describe(b.next(t))]++
	}
	for _, m := range batch {
		counts[describe(m)]--
	}
	for m, n := range counts {
		if n != 0 {
			t.Errorf("%s received %+d times more than sent", m, n)
		}
	}
	if n := b.reports.Count(testenv.AnyStage); n > 0 {
		t.Errorf("reported: %v", b.reports)
	}
}
