package clustersync

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/internal/reconnect"
	"github.com/edgesync/edgesync/internal/testenv"
)

// awaitReport waits for a report at StageSubscribe that contains text,
// after the first skip, and returns how many reports there were at that
// stage up to it.
func awaitReport(t *testing.T, log *testenv.ErrorLog, skip int, text string) int {
	t.Helper()
	for n := skip; ; n++ {
		if err := log.Await(t, edge.StageSubscribe, n, waitTimeout); strings.Contains(err.Error(), text) {
			return n + 1
		}
	}
}

// replaceWithFile puts a regular file holding data at path, in one rename.
func replaceWithFile(t *testing.T, path, data string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "tmp")
	if err := os.WriteFile(tmp, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// exchangeAll has each instance publish to all the others and waits until
// every message arrives.
func exchangeAll(t *testing.T, round string, ins ...instance) {
	t.Helper()
	for _, from := range ins {
		publish(t, from, round+" from "+from.inst.ID)
	}
	for _, to := range ins {
		for _, from := range ins {
			if from.inst.ID == to.inst.ID {
				continue
			}
			text := round + " from " + from.inst.ID
			to.rec.waitFor(t, "a message of "+round, func() bool { return to.rec.has(text) })
		}
	}
}

// TestSocketRemoved removes the socket file under a running cluster: the
// members keep exchanging messages, the relay listens again, and a new
// instance joins them.
func TestSocketRemoved(t *testing.T) {
	socket := socketPath(t)
	opts := Options{Socket: socket, Channel: testenv.Channel(t)}
	a := start(t, opts)
	b := start(t, opts)
	if !a.isRelay() {
		t.Fatal("the first instance does not relay")
	}
	if err := os.Remove(socket); err != nil {
		t.Fatal(err)
	}
	exchangeAll(t, "while removed", a, b)

	// Subscribe fails if the relay has not listened again within its
	// startup timeout; either way the instance joins.
	c := build(t, opts)
	if err := c.Subscribe(context.Background(), c.rec.deliver); err != nil {
		t.Logf("Subscribe: %v", err)
	}
	probe(t, c, a)
	probe(t, a, c)
	exchangeAll(t, "after", a, b, c)
	if c.isRelay() {
		t.Fatal("a new instance took the relay role from a live relay")
	}
	awaitReport(t, a.log, 0, "listening on it again")
	for _, in := range []instance{b, c} {
		if n := in.log.Count(edge.StageSubscribe); n > 0 {
			t.Errorf("an instance reported at StageSubscribe: %v", in.log)
		}
	}
}

// TestSocketReplacedByFile puts a regular file where the socket was: the
// relay leaves it alone, says so once, and keeps relaying for its members;
// new instances connect once the file is removed.
func TestSocketReplacedByFile(t *testing.T) {
	socket := socketPath(t)
	opts := Options{Socket: socket, Channel: testenv.Channel(t)}
	a := start(t, opts)
	b := start(t, opts)
	replaceWithFile(t, socket, "not yours")
	n := awaitReport(t, a.log, 0, "replaced by a file that is not the relay's")
	exchangeAll(t, "while replaced", a, b)

	c := build(t, opts)
	if err := c.Subscribe(context.Background(), c.rec.deliver); err == nil {
		t.Fatal("Subscribe succeeded with a regular file at the socket's path")
	}
	if data, err := os.ReadFile(socket); err != nil || string(data) != "not yours" {
		t.Fatalf("the file at the socket's path was changed: %q, %v", data, err)
	}
	if err := os.Remove(socket); err != nil {
		t.Fatal(err)
	}
	if got := awaitReport(t, a.log, n, "listening on it again"); got != n+1 {
		t.Errorf("the relay reported the replaced socket more than once: %v", a.log)
	}
	// c keeps trying in the background, and joins.
	probe(t, c, a)
	probe(t, b, c)
	exchangeAll(t, "after", a, b, c)
	if c.isRelay() {
		t.Fatal("a new instance took the relay role from a live relay")
	}
	if n := c.log.Count(edge.StageSubscribe); n > 0 {
		t.Errorf("the new instance reported again the outage that Subscribe returned: %v", c.log)
	}
}

// TestLockFileReplaced replaces the lock file with one that another relay
// holds: the relay steps down and removes nothing of the other's; when the
// other lock is released, the instances elect a relay among themselves.
func TestLockFileReplaced(t *testing.T) {
	socket := socketPath(t)
	opts := Options{Socket: socket, Channel: testenv.Channel(t)}
	a := start(t, opts)
	b := start(t, opts)

	// The new lock file, held as another relay would hold it.
	tmp := filepath.Join(filepath.Dir(socket), "other.lock")
	other, err := tryLock(tmp)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, socket+".lock"); err != nil {
		t.Fatal(err)
	}
	awaitReport(t, a.log, 0, "stepping down")
	if a.isRelay() {
		t.Fatal("the relay did not step down")
	}
	if _, err := os.Lstat(socket + ".lock"); err != nil {
		t.Fatalf("the relay that stepped down removed the new lock file: %v", err)
	}
	other.Close()

	probe(t, a, b)
	probe(t, b, a)
	if a.isRelay() == b.isRelay() {
		t.Fatalf("relay roles after the election: a %v, b %v; want exactly one", a.isRelay(), b.isRelay())
	}
	c := start(t, opts)
	exchangeAll(t, "after", a, b, c)
}

// TestRelayServeStepsDown checks that Serve returns ErrRelayActive when
// another relay holds the lock file now at its path.
func TestRelayServeStepsDown(t *testing.T) {
	socket := socketPath(t)
	log := testenv.NewErrorLog()
	served := make(chan error, 1)
	go func() {
		served <- (&Relay{Socket: socket, OnError: func(err error) { log.Report(err, edge.StageSubscribe) }}).Serve(context.Background())
	}()
	a := start(t, Options{Socket: socket, NoRelay: true, Channel: testenv.Channel(t)})
	tmp := filepath.Join(filepath.Dir(socket), "other.lock")
	other, err := tryLock(tmp)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := os.Rename(tmp, socket+".lock"); err != nil {
		t.Fatal(err)
	}
	err = testenv.Recv(t, served, waitTimeout, "Serve to return")
	if !errors.Is(err, ErrRelayActive) {
		t.Fatalf("Serve: got %v, want ErrRelayActive", err)
	}
	a.log.Await(t, edge.StageSubscribe, 0, waitTimeout)
	if _, err := os.Lstat(socket); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the relay that stepped down left its socket: %v", err)
	}
}

// BenchmarkRelayCheck measures what the relay spends, every checkInterval,
// on checking its socket and lock file.
func BenchmarkRelayCheck(b *testing.B) {
	s, err := listen(socketPath(b), DefaultMaxMessageBytes, DefaultMaxQueueBytes, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer s.close()
	for b.Loop() {
		if err := s.check(); err != nil {
			b.Fatal(err)
		}
	}
}

// refuser listens on socket like a relay that never greets: every
// connection attempt of a driver is accepted, counted and closed.
type refuser struct {
	ln       *net.UnixListener
	attempts chan struct{} // receives one value per connection
}

func refuse(t *testing.T, socket string) *refuser {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: socket, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	r := &refuser{ln: ln, attempts: make(chan struct{}, 1000)}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			conn.Close()
			select {
			case r.attempts <- struct{}{}:
			default:
			}
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return r
}

// drain forgets the connection attempts counted so far.
func (r *refuser) drain() {
	for {
		select {
		case <-r.attempts:
		default:
			return
		}
	}
}

// await waits for n more connection attempts.
func (r *refuser) await(t *testing.T, n int) {
	t.Helper()
	for i := range n {
		testenv.Recv(t, r.attempts, waitTimeout, fmt.Sprintf("connection attempt %d of %d", i+1, n))
	}
}

// TestOutageReportedOnce checks the reconnect rule: an outage is reported
// once at StageSubscribe however many attempts fail during it, recovery is
// silent, and the next loss is reported again. A Subscribe that fails
// returns the error and keeps trying.
func TestOutageReportedOnce(t *testing.T) {
	socket := socketPath(t)
	const attempts = 200
	fast := reconnect.Backoff{Min: time.Millisecond, Max: time.Millisecond}

	// No relay at startup: Subscribe returns the error, which the Hub
	// reports, and the driver does not report it again.
	fake := refuse(t, socket)
	a := build(t, Options{Socket: socket, NoRelay: true, Channel: testenv.Channel(t)})
	a.retry = fast
	if err := a.Subscribe(context.Background(), a.rec.deliver); err == nil {
		t.Fatal("Subscribe succeeded with no relay")
	}
	fake.drain()
	fake.await(t, attempts)
	if n := a.log.Count(edge.StageSubscribe); n != 0 {
		t.Fatalf("after %d failed attempts the outage that Subscribe returned was reported %d times: %v", attempts, n, a.log)
	}

	// A relay comes: a connects, silently.
	fake.drain()
	fake.ln.Close()
	ctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- (&Relay{Socket: socket}).Serve(ctx) }()
	b := start(t, Options{Socket: socket, NoRelay: true, Channel: a.channel})
	probe(t, a, b)
	if n := a.log.Count(edge.StageSubscribe); n != 0 {
		t.Fatalf("recovery was reported: %v", a.log)
	}

	// The relay goes and does not come back for many attempts: one report.
	stop()
	if err := testenv.Recv(t, served, waitTimeout, "Serve to return"); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	a.log.Await(t, edge.StageSubscribe, 0, waitTimeout)
	fake = refuse(t, socket)
	fake.await(t, attempts)
	if n := a.log.Count(edge.StageSubscribe); n != 1 {
		t.Fatalf("an outage of more than %d attempts was reported %d times: %v", attempts, n, a.log)
	}
}
