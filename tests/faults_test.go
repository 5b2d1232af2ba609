package tests

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/edgesync/edgesync/drivers/pgsync"
	"github.com/edgesync/edgesync/drivers/redissync"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/internal/testenv"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
)

// These tests break the backplane under a running cluster: connections
// killed, servers restarted or absent, strangers writing on the channel.
// Nothing may crash, every outage is reported, and messages published after
// recovery arrive.

// redisSync returns a Sync on a client of its own for url.
func redisSync(t *testing.T, url, channel string) edge.Sync {
	t.Helper()
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	opts.MaxRetries = -1
	opts.ContextTimeoutEnabled = true // a relay gives up at the Hub's PublishTimeout
	client := redis.NewClient(opts)
	t.Cleanup(func() { client.Close() })
	return redissync.New(redissync.Options{Client: client, Channel: channel})
}

// watched starts an instance whose errors are logged for the test to await.
func watched(t *testing.T, sync edge.Sync) (*instance, *testenv.ErrorLog) {
	t.Helper()
	log := testenv.NewErrorLog()
	return startInstanceWith(t, edge.Options{Sync: sync, OnError: log.OnError}), log
}

// stream sends n messages from one client and waits until the other has
// all of them. Probes left over from awaitRelay are skipped.
func stream(t *testing.T, from, to *client, label string, n int) {
	t.Helper()
	want := make(map[string]bool, n)
	for i := range n {
		msg := fmt.Sprintf("%s %d", label, i)
		want[msg] = true
		from.send(t, websocket.MessageText, msg)
	}
	for len(want) > 0 {
		f := to.next(t)
		if strings.HasPrefix(f.data, "probe ") {
			continue
		}
		if !want[f.data] {
			t.Fatalf("%s: unexpected %q", label, f.data)
		}
		delete(want, f.data)
	}
}

// awaitRelay sends probes from one client until one reaches the other: the
// relay between their instances works again. Relay is at most once, so a
// probe sent during the outage may be lost; the next one is sent after a
// short wait for the previous. Probes are marked with a token of their own
// call, so that a late probe of an earlier call proves nothing.
func awaitRelay(t *testing.T, from, to *client) {
	t.Helper()
	token := "probe " + edge.NewID() + " "
	deadline := time.Now().Add(wait)
	for i := 0; time.Now().Before(deadline); i++ {
		from.send(t, websocket.MessageText, fmt.Sprintf("%s%d", token, i))
		if awaitProbe(t, to, token, 100*time.Millisecond) {
			return
		}
	}
	t.Fatal("the relay did not recover")
}

// awaitProbe reports whether a probe with the token reaches c within d.
// Older probes and messages of earlier streams still on their way to c are
// skipped.
func awaitProbe(t *testing.T, c *client, token string, d time.Duration) bool {
	t.Helper()
	timeout := time.After(d)
	for {
		select {
		case f := <-c.frames:
			if strings.HasPrefix(f.data, token) {
				return true
			}
		case err := <-c.done:
			t.Fatalf("connection ended while probing: %v", err)
		case <-timeout:
			return false
		}
	}
}

func TestRedisPubSubKilledAndServerRestarted(t *testing.T) {
	t.Parallel()
	srv := newRedisServer(t)
	srv.start()
	channel := testenv.Channel(t)
	a := startInstance(t, redisSync(t, srv.url(), channel))
	b, log := watched(t, redisSync(t, srv.url(), channel))
	ca, cb := dial(t, a.url("/room")), dial(t, b.url("/room"))
	stream(t, ca, cb, "healthy", 200)

	admin := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", srv.port)})
	if err := admin.ClientKillByFilter(context.Background(), "TYPE", "pubsub").Err(); err != nil {
		t.Fatal(err)
	}
	admin.Close()
	log.Await(t, edge.StageSubscribe, 0, wait)
	awaitRelay(t, ca, cb)
	stream(t, ca, cb, "after CLIENT KILL", 200)

	reported := log.Count(edge.StageSubscribe)
	srv.stop()
	srv.start()
	log.Await(t, edge.StageSubscribe, reported, wait)
	awaitRelay(t, ca, cb)
	stream(t, ca, cb, "after restart", 200)
}

func TestRedisUnreachableAtStart(t *testing.T) {
	t.Parallel()
	srv := newRedisServer(t) // not started yet
	channel := testenv.Channel(t)
	b, log := watched(t, redisSync(t, srv.url(), channel))
	log.Await(t, edge.StageSubscribe, 0, wait)

	// Local delivery does not depend on the backplane.
	b1, b2 := dial(t, b.url("/room")), dial(t, b.url("/room"))
	stream(t, b1, b2, "local", 50)

	srv.start()
	a := startInstance(t, redisSync(t, srv.url(), channel))
	ca := dial(t, a.url("/room"))
	awaitRelay(t, ca, b1)
	stream(t, ca, b2, "once the server appeared", 100)
}

func TestPostgresListenerTerminated(t *testing.T) {
	t.Parallel()
	url := testenv.PostgresURL(t)
	channel := testenv.Channel(t)
	a := startInstance(t, pgsync.New(pgsync.Options{ConnString: url, Channel: channel}))
	b, log := watched(t, pgsync.New(pgsync.Options{ConnString: url, Channel: channel}))
	ca, cb := dial(t, a.url("/room")), dial(t, b.url("/room"))
	stream(t, ca, cb, "healthy", 200)

	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var killed int
	err = pool.QueryRow(context.Background(), `
		SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE application_name = $1 AND query LIKE '%' || $2 || '%'`,
		pgsync.ListenApplicationName, channel).Scan(&killed)
	if err != nil || killed != 2 {
		t.Fatalf("terminated %d listeners: %v", killed, err)
	}
	log.Await(t, edge.StageSubscribe, 0, wait)
	awaitRelay(t, ca, cb)
	stream(t, ca, cb, "after pg_terminate_backend", 200)
}

func TestPostgresUnreachableAtStart(t *testing.T) {
	t.Parallel()
	url := testenv.PostgresURL(t)
	px, proxied := proxied(t, url)
	px.Cut() // no server yet
	channel := testenv.Channel(t)

	b, log := watched(t, pgsync.New(pgsync.Options{ConnString: proxied, Channel: channel}))
	log.Await(t, edge.StageSubscribe, 0, wait)
	b1, b2 := dial(t, b.url("/room")), dial(t, b.url("/room"))
	stream(t, b1, b2, "local", 50)

	px.Restore() // the server appears
	a := startInstance(t, pgsync.New(pgsync.Options{ConnString: url, Channel: channel}))
	ca := dial(t, a.url("/room"))
	awaitRelay(t, ca, b1)
	stream(t, ca, b2, "once the server appeared", 100)

	// And once more: the server goes away under a running instance.
	reported := log.Count(edge.StageSubscribe)
	px.Cut()
	log.Await(t, edge.StageSubscribe, reported, wait)
	px.Restore()
	awaitRelay(t, ca, b1)
	stream(t, ca, b2, "after the server came back", 100)
}

// TestPostgresServerRestart restarts the machine's Postgres server, which
// every other test would notice: it runs only when EDGESYNC_POSTGRES_RESTART
// holds the shell command that restarts the server, as .ci/run sets it in a
// step of its own.
func TestPostgresServerRestart(t *testing.T) {
	restart := os.Getenv("EDGESYNC_POSTGRES_RESTART")
	if restart == "" {
		t.Skip("set EDGESYNC_POSTGRES_RESTART to the command that restarts the Postgres server")
	}
	url := testenv.PostgresURL(t)
	channel := testenv.Channel(t)
	a := startInstance(t, pgsync.New(pgsync.Options{ConnString: url, Channel: channel}))
	b, log := watched(t, pgsync.New(pgsync.Options{ConnString: url, Channel: channel}))
	ca, cb := dial(t, a.url("/room")), dial(t, b.url("/room"))
	stream(t, ca, cb, "healthy", 200)

	if out, err := exec.Command("sh", "-c", restart).CombinedOutput(); err != nil {
		t.Fatalf("restart: %v\n%s", err, out)
	}
	log.Await(t, edge.StageSubscribe, 0, wait)
	awaitRelay(t, ca, cb)
	stream(t, ca, cb, "after restart", 200)
}

// strangers are payloads no edgesync or crossws instance sends.
var strangers = []string{
	"not json",
	`[1,2,3]`,
	`{"id":1,"msg":{}}`,
	`{"id":"stranger","msg":{"namespace":"/room","topic":"chat","data":null}}`,
	`{"id":"stranger","msg":{"namespace":"/room","topic":"chat","binary":true,"data":"%%%"}}`,
}

func TestStrangersOnTheRedisChannel(t *testing.T) {
	t.Parallel()
	url := testenv.RedisURL(t)
	channel := testenv.Channel(t)
	publish := func(payload string) {
		opts, _ := redis.ParseURL(url)
		raw := redis.NewClient(opts)
		defer raw.Close()
		if err := raw.Publish(context.Background(), channel, payload).Err(); err != nil {
			t.Fatal(err)
		}
	}
	huge := `{"id":"stranger","msg":{"namespace":"/room","topic":"chat","binary":false,"data":"` +
		strings.Repeat("x", 2<<20) + `"}}`
	testStrangers(t, redisSync(t, url, channel), redisSync(t, url, channel), publish, append(strangers, huge))
}

func TestStrangersOnThePostgresChannel(t *testing.T) {
	t.Parallel()
	url := testenv.PostgresURL(t)
	channel := testenv.Channel(t)
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	publish := func(payload string) {
		if _, err := pool.Exec(context.Background(), "SELECT pg_notify($1, $2)", channel, payload); err != nil {
			t.Fatal(err)
		}
	}
	sync := func() edge.Sync { return pgsync.New(pgsync.Options{Pool: pool, ConnString: url, Channel: channel}) }
	testStrangers(t, sync(), sync(), publish, strangers)
}

// testStrangers has a stranger publish payloads on the channel of a running
// cluster: each is dropped and reported, and the chat goes on.
func testStrangers(t *testing.T, syncA, syncB edge.Sync, publish func(string), payloads []string) {
	a := startInstance(t, syncA)
	b, log := watched(t, syncB)
	ca, cb := dial(t, a.url("/room")), dial(t, b.url("/room"))
	stream(t, ca, cb, "before", 50)
	for _, p := range payloads {
		publish(p)
	}
	log.Await(t, edge.StageDelivery, len(payloads)-1, wait)
	stream(t, ca, cb, "after", 50)
	if st := b.hub.Stats(); st.Errors < uint64(len(payloads)) {
		t.Fatalf("stats count %d errors, want at least %d", st.Errors, len(payloads))
	}
}
