package pgsync_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/edgesync/edgesync/drivers/pgsync"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/internal/faultproxy"
	"github.com/edgesync/edgesync/internal/testenv"
)

// viaProxy returns a fault proxy to the test server and the connection
// string that reaches the server through it.
func viaProxy(t *testing.T) (*faultproxy.Proxy, string) {
	t.Helper()
	url := testenv.PostgresURL(t)
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	target := fmt.Sprintf("%s:%d", cfg.Host, cfg.Port)
	px, err := faultproxy.New(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { px.Close() })
	return px, strings.Replace(url, target, px.Addr(), 1)
}

// A LISTEN connection that freezes (open, but passing nothing) is found out
// within the bound of the liveness check, reported once and replaced.
func TestFrozenListenerIsReplaced(t *testing.T) {
	t.Parallel()
	px, proxied := viaProxy(t)
	pool := newPool(t, testenv.PostgresURL(t))
	channel := testenv.Channel(t)
	a, _ := newHub(t, pgsync.New(pgsync.Options{Pool: pool, Channel: channel}))
	// b listens through the proxy and publishes, probes included, directly.
	b, bLog := newHub(t, pgsync.New(pgsync.Options{Pool: pool, ConnString: proxied, Channel: channel}))
	_, ep := join(t, b, "/n", "t")

	// A steady stream from a: traffic on the listening connection.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			a.Publish(context.Background(), edge.Message{Namespace: "/n", Topic: "t", Data: edge.Text(fmt.Sprint("before ", i))})
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	ep.next(t)

	px.Freeze()
	frozen := time.Now()
	lost := bLog.Await(t, edge.StageSubscribe, 0, waitTimeout)
	// A ping every second, answered within 2: at most 3 seconds, and
	// slack for a loaded machine.
	if d := time.Since(frozen); d > 4500*time.Millisecond {
		t.Errorf("the frozen connection was reported after %v, want at most 3s", d)
	}
	t.Logf("reported after %v: %v", time.Since(frozen).Round(time.Millisecond), lost)
	close(stop)
	wg.Wait()
	stop = make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			a.Publish(context.Background(), edge.Message{Namespace: "/n", Topic: "t", Data: edge.Text("after")})
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	for got := ep.next(t); got.String() != "after"; got = ep.next(t) {
	}
	if errs := bLog.Errors(edge.StageSubscribe); len(errs) != 1 {
		t.Errorf("reported at StageSubscribe %d times, want once: %v", len(errs), errs)
	}
	if errs := bLog.Errors(edge.StageDelivery); len(errs) > 0 {
		t.Errorf("reported at StageDelivery: %v", errs)
	}
}

// A pool connection on which a publish timed out is not used again, nor are
// the idle connections of the driver's own pool opened before the same
// fault: the next publish goes out on a new connection.
func TestFrozenPoolConnectionsAreDiscarded(t *testing.T) {
	t.Parallel()
	px, proxied := viaProxy(t)
	channel := testenv.Channel(t)
	d, err := pgsync.New(pgsync.Options{ConnString: proxied, Channel: channel})(edge.Instance{ID: edge.NewID(), Report: func(error, edge.Stage) {}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	msg := edge.Message{Namespace: "/n", Topic: "t", Data: edge.Text("x")}
	// Open several pool connections.
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := d.Publish(testCtx(t), msg); err != nil {
				t.Errorf("Publish: %v", err)
			}
		}()
	}
	wg.Wait()
	px.Freeze()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	err = d.Publish(ctx, msg)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Publish on a frozen connection: %v, want a timeout", err)
	}
	// However long the frozen connections have been idle.
	for range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := d.Publish(ctx, msg)
		cancel()
		if err != nil {
			t.Fatalf("Publish after a timed-out one: %v", err)
		}
	}
	// Closing the frozen connections of the proxy first spares Close
	// the wait pgx gives a connection that does not answer its goodbye.
	px.Close()
}

// A listening connection that answers pings but does not receive what the
// instance publishes (here the pool publishes into another database, whose
// notifications it never sees) is found out by its probes and replaced.
func TestListenerMissingItsProbesIsReplaced(t *testing.T) {
	t.Parallel()
	url := testenv.PostgresURL(t)
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Database == "postgres" {
		t.Skip("the test server's database is postgres: no other database to publish into")
	}
	pool := newPool(t, strings.Replace(url, "/"+cfg.Database, "/postgres", 1))
	if got := pool.Config().ConnConfig.Database; got != "postgres" {
		t.Skipf("could not point a pool at the postgres database (got %q)", got)
	}
	build, counts := pgsync.SetProbeTimingCounted(pgsync.New(pgsync.Options{Pool: pool, ConnString: url, Channel: testenv.Channel(t)}),
		100*time.Millisecond, 300*time.Millisecond)
	_, log := newHub(t, build)
	lost := log.Await(t, edge.StageSubscribe, 0, waitTimeout)
	if !strings.Contains(lost.Error(), "probe") {
		t.Errorf("reported %v, want the probe named", lost)
	}
	// Each new listener connects but gets no probe back either: the
	// outage goes on, and is not reported again.
	deadline := time.Now().Add(waitTimeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for _, listens := counts(); listens < 4; _, listens = counts() {
		if time.Now().After(deadline) {
			t.Fatalf("%d listening connections within %v, want 4", listens, waitTimeout)
		}
		<-tick.C
	}
	if n := log.Count(edge.StageSubscribe); n != 1 {
		t.Errorf("reported at StageSubscribe %d times, want once for the outage: %v", n, log.Errors(edge.StageSubscribe))
	}
}
