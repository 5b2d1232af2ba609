package faultproxy_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/edgesync/edgesync/internal/faultproxy"
)

// wait bounds every wait of these tests.
const wait = 10 * time.Second

// echoServer accepts connections and echoes what they send, until the test
// ends.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				io.Copy(c, c)
				c.Close()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

func newProxy(t *testing.T, target string) *faultproxy.Proxy {
	t.Helper()
	p, err := faultproxy.New(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Error(err)
		}
	})
	return p
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, wait)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip sends msg on c and reads its echo, failing t on any error.
func roundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if err := echo(c, msg, wait); err != nil {
		t.Fatalf("round trip of %q: %v", msg, err)
	}
}

// echo sends msg on c and reads it back within d.
func echo(c net.Conn, msg string, d time.Duration) error {
	c.SetDeadline(time.Now().Add(d))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if !bytes.Equal(got, []byte(msg)) {
		return errors.New("echo is " + string(got))
	}
	return nil
}

// awaitClosed waits until the peer of c has closed it, and returns the read
// error.
func awaitClosed(t *testing.T, c net.Conn) error {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(wait))
	_, err := c.Read(make([]byte, 1))
	if errors.Is(err, os.ErrDeadlineExceeded) || err == nil {
		t.Fatalf("the connection is still open: %v", err)
	}
	return err
}

func TestForwards(t *testing.T) {
	p := newProxy(t, echoServer(t))
	c := dial(t, p.Addr())
	roundTrip(t, c, "hello")
	roundTrip(t, c, string(bytes.Repeat([]byte("x"), 1<<20)))
}

func TestCutClosesAndRefusesUntilRestore(t *testing.T) {
	p := newProxy(t, echoServer(t))
	c := dial(t, p.Addr())
	roundTrip(t, c, "before")
	p.Cut()
	awaitClosed(t, c)
	refused := dial(t, p.Addr())
	awaitClosed(t, refused)
	p.Restore()
	roundTrip(t, dial(t, p.Addr()), "after")
}

func TestFreezeStopsBytesButKeepsConnectionsOpen(t *testing.T) {
	p := newProxy(t, echoServer(t))
	c := dial(t, p.Addr())
	roundTrip(t, c, "before")
	p.Freeze()
	// Nothing comes back, and the connection is not closed either.
	err := echo(c, "frozen", 200*time.Millisecond)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a frozen connection answered or closed: %v", err)
	}
	// A new connection works.
	roundTrip(t, dial(t, p.Addr()), "new")
	// Thawed, the held bytes arrive.
	p.Restore()
	got := make([]byte, len("frozen"))
	c.SetReadDeadline(time.Now().Add(wait))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "frozen" {
		t.Fatalf("after Restore, read %q: %v", got, err)
	}
	roundTrip(t, c, "thawed")
}

func TestSlowDelaysEachDirection(t *testing.T) {
	p := newProxy(t, echoServer(t))
	c := dial(t, p.Addr())
	const d = 100 * time.Millisecond
	p.Slow(d)
	start := time.Now()
	roundTrip(t, c, "slow")
	if rt := time.Since(start); rt < 2*d {
		t.Fatalf("round trip took %v through a link slowed by %v each way", rt, d)
	}
	p.Restore()
	roundTrip(t, c, "fast again")
}

func TestResetSendsRST(t *testing.T) {
	p := newProxy(t, echoServer(t))
	c := dial(t, p.Addr())
	roundTrip(t, c, "before")
	p.Reset()
	if err := awaitClosed(t, c); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read after Reset: %v, want a connection reset", err)
	}
	roundTrip(t, dial(t, p.Addr()), "new")
}

func TestCloseEndsEverything(t *testing.T) {
	before := runtime.NumGoroutine()
	target := echoServer(t)
	p, err := faultproxy.New(target)
	if err != nil {
		t.Fatal(err)
	}
	open, frozen := dial(t, p.Addr()), dial(t, p.Addr())
	roundTrip(t, open, "open")
	roundTrip(t, frozen, "frozen")
	p.Freeze()
	frozen.Write([]byte("held"))
	p.Slow(time.Hour)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	awaitClosed(t, open)
	awaitClosed(t, frozen)
	if n := p.Conns(); n != 0 {
		t.Fatalf("%d connections left after Close", n)
	}
	if _, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
		t.Fatal("the proxy still accepts after Close")
	}
	// Only the echo server's goroutines may be left: one per connection
	// it still serves, and its accept loop.
	open.Close()
	frozen.Close()
	deadline := time.Now().Add(wait)
	for runtime.NumGoroutine() > before+1 {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("goroutines left: %d, before: %d\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		runtime.Gosched()
		time.Sleep(time.Millisecond)
	}
}
