package longlived_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/longlived"
)

// idlePeers is how many connections BenchmarkIdlePeers holds open.
const idlePeers = 10_000

// idleClientsEnv tells a copy of the test binary to be BenchmarkIdlePeers'
// client process: "address path count".
const idleClientsEnv = "LONGLIVED_IDLE_CLIENTS"

// BenchmarkIdlePeers measures the memory (live heap plus goroutine stacks)
// that the server holds for each idle peer, subscribed to a topic, with the
// default settings (pings every 30 s, 16 MiB write queue cap). Run it once:
//
//	go test -run '^$' -bench BenchmarkIdlePeers -benchtime 1x ./longlived
//
// The clients run in a child process (this test binary again, as
// TestIdleClients), so nothing of theirs is counted, and each process needs
// only one file descriptor per connection.
func BenchmarkIdlePeers(b *testing.B) {
	hub, err := edge.New(edge.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { hub.Close() })
	var received atomic.Int64
	ready := make(chan struct{})
	h := longlived.New(hub, edge.Hooks{
		Open: func(p edge.Peer) { _ = p.Subscribe(context.Background(), "news") },
		Message: func(p edge.Peer, d edge.Data) {
			if received.Add(1) == idlePeers {
				close(ready)
			}
		},
	})
	srv := httptest.NewServer(h)
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := h.Close(ctx); err != nil {
			b.Error(err)
		}
		srv.Close()
	}()

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	goroutines := runtime.NumGoroutine()

	cmd := exec.Command(os.Args[0], "-test.run=^TestIdleClients$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s /idle %d", idleClientsEnv, srv.Listener.Addr(), idlePeers))
	var output bytes.Buffer
	cmd.Stdout, cmd.Stderr = &output, &output
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	started := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		stdin.Close() // the client process closes its connections and exits
		if err := <-exited; err != nil {
			b.Errorf("client process: %v\n%s", err, output.Bytes())
		}
	}()

	// Every peer has read its message: each is back in its read loop.
	select {
	case <-ready:
	case err := <-exited:
		exited <- err
		b.Fatalf("client process exited early (%v) after %d peers:\n%s", err, received.Load(), output.Bytes())
	case <-time.After(2 * time.Minute):
		b.Fatalf("only %d of %d peers sent their message", received.Load(), idlePeers)
	}
	connected := time.Since(started)
	runtime.GC()
	runtime.ReadMemStats(&after)
	goroutines = runtime.NumGoroutine() - goroutines
	rss, err := residentBytes()
	if err != nil {
		b.Fatal(err)
	}
	// What the process needs once the runtime has returned the memory it
	// no longer uses, as its scavenger does in the background.
	debug.FreeOSMemory()
	settled, err := residentBytes()
	if err != nil {
		b.Fatal(err)
	}

	used := int64(after.HeapAlloc+after.StackInuse) - int64(before.HeapAlloc+before.StackInuse)
	b.ReportMetric(float64(used)/idlePeers, "B/peer")
	b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/idlePeers, "heap-B/peer")
	b.ReportMetric(float64(int64(after.StackInuse)-int64(before.StackInuse))/idlePeers, "stack-B/peer")
	b.ReportMetric(float64(goroutines)/idlePeers, "goroutines/peer")
	b.ReportMetric(float64(rss)/(1<<20), "rss-MiB")
	b.ReportMetric(float64(settled)/(1<<20), "rss-settled-MiB")
	b.ReportMetric(connected.Seconds(), "connect-s")
	b.ReportMetric(0, "ns/op")
}

// residentBytes returns the resident memory of this process, the whole of
// it: the Go heap and stacks, the runtime's own, the binary.
func residentBytes() (int64, error) {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(status)) {
		if kb, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(kb), " kB"), 10, 64)
			return n << 10, err
		}
	}
	return 0, errors.New("no VmRSS in /proc/self/status")
}

// TestIdleClients is BenchmarkIdlePeers' client process: it opens the
// connections all at once, then holds them until its standard input is
// closed.
func TestIdleClients(t *testing.T) {
	spec := os.Getenv(idleClientsEnv)
	if spec == "" {
		t.Skip("runs only as the client process of BenchmarkIdlePeers")
	}
	var addr, path string
	var n int
	if _, err := fmt.Sscan(spec, &addr, &path, &n); err != nil {
		t.Fatalf("%s=%q: %v", idleClientsEnv, spec, err)
	}
	conns := make([]net.Conn, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { conns[i], errs[i] = rawDial(addr, path) })
	}
	wg.Wait()
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, os.Stdin)
}

// rawDial opens a WebSocket connection with the least a client needs: a TCP
// connection, a hand-written handshake and one masked text frame, "hi".
func rawDial(addr, path string) (net.Conn, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	_, err = fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", path, addr)
	if err != nil {
		c.Close()
		return nil, err
	}
	var buf [512]byte
	n := 0
	for !bytes.Contains(buf[:n], []byte("\r\n\r\n")) {
		if n == len(buf) {
			c.Close()
			return nil, fmt.Errorf("handshake response too long: %q", buf[:n])
		}
		m, err := c.Read(buf[n:])
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("handshake: %w", err)
		}
		n += m
	}
	if !bytes.HasPrefix(buf[:n], []byte("HTTP/1.1 101 ")) {
		c.Close()
		return nil, fmt.Errorf("handshake refused: %q", buf[:n])
	}
	// FIN + text, masked, 2 bytes, a zero mask key, "hi".
	if _, err := c.Write([]byte{0x81, 0x82, 0, 0, 0, 0, 'h', 'i'}); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}
