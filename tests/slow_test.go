package tests

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/internal/testenv"
	"github.com/edgesync/edgesync/longlived"
)

// These tests put clients that never read beside clients that chat, the
// clients in a process of their own as they would be in production: in the
// server's process, they would compete with its writers for the processor
// and slow their own sending down, which hides the server's faults.

// slowRoom is a chat scenario: slow clients never read; healthy ones send
// rate messages a second of size bytes each, and read everything.
type slowRoom struct {
	slow, healthy int
	rate, size    int
}

// slowClientsEnv carries a slowRoom to the client process.
const slowClientsEnv = "EDGESYNC_SLOW_CLIENTS"

// TestSlowConsumersCostHealthyPeersNothing: never-reading clients are
// closed as slow consumers and cost the clients that keep up nothing: none
// of those is closed, and each receives every message.
func TestSlowConsumersCostHealthyPeersNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("a load test")
	}
	// The shape that evicted 17 healthy clients of 20, beside 300 that
	// never read, is 20 clients sending 50 messages a second of 4 KiB:
	// 1,000 a second, fanned out to every peer. Halved, with the same
	// total rate and the same proportions, it runs in seconds under the
	// race detector, and the never-reading clients' socket buffers still
	// take hundreds of megabytes, which keeps the others' writers behind
	// while they fill. EDGESYNC_SLOW_ROOM="300 20 50" runs the full size
	// (never-reading clients, healthy clients, messages a second each).
	room := slowRoom{slow: 150, healthy: 10, rate: 100, size: 4 << 10}
	if v := os.Getenv("EDGESYNC_SLOW_ROOM"); v != "" {
		if _, err := fmt.Sscan(v, &room.slow, &room.healthy, &room.rate); err != nil {
			t.Fatalf("EDGESYNC_SLOW_ROOM=%q: %v", v, err)
		}
	}
	testSlowRoom(t, room)
}

func testSlowRoom(t *testing.T, room slowRoom) {
	srv := startSlowServer(t, room)
	clients := startSlowClients(t, srv.url, room)

	for range room.slow + room.healthy {
		testenv.Recv(t, srv.opened, wait, "every client's peer to open")
	}
	base := heapInUse()
	peak := sampleHeap(t)

	// Chat until every never-reading client has been found out.
	clients.send("go")
	deadline := time.After(2 * time.Minute)
	for evicted := 0; evicted < room.slow; {
		select {
		case name := <-srv.slowConsumers:
			if !strings.HasPrefix(name, "slow") {
				t.Errorf("%s closed as a slow consumer", name)
				continue
			}
			evicted++
		case <-deadline:
			t.Fatalf("%d of %d never-reading clients closed as slow consumers", evicted, room.slow)
		}
	}
	clients.send("stop")
	report := clients.wait(t)
	for _, line := range report {
		if !strings.HasPrefix(line, "ok ") {
			t.Error(line)
		}
	}
	if len(report) != room.healthy {
		t.Errorf("reports from %d healthy clients, want %d: %q", len(report), room.healthy, report)
	}

	// The client process has exited: every connection has ended.
	for range room.slow + room.healthy {
		testenv.Recv(t, srv.closed, wait, "every peer to close")
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	for name, code := range srv.closes {
		switch {
		case strings.HasPrefix(name, "slow") && code != longlived.StatusSlowConsumer:
			t.Errorf("%s closed with %d, want %d (slow consumer): %v", name, code, longlived.StatusSlowConsumer, srv.errs[name])
		case strings.HasPrefix(name, "healthy") && code == longlived.StatusSlowConsumer:
			t.Errorf("%s closed as a slow consumer: %v", name, srv.errs[name])
		}
	}
	for name, errs := range srv.errs {
		if strings.HasPrefix(name, "healthy") {
			t.Errorf("%s: errors reported: %v", name, errs)
		}
	}

	// Every queue is capped, and a slow consumer's is dropped when it is
	// evicted: the memory the peers hold is bounded by the caps, and far
	// below their sum, since the queues share the payloads of the fan-out.
	grown := int64(peak()) - int64(base)
	bound := int64(room.slow+room.healthy) * int64(longlived.DefaultWriteQueueBytes)
	t.Logf("heap in use grew by %d KiB at most, while the bound is %d MiB", grown>>10, bound>>20)
	if grown > bound {
		t.Errorf("heap in use grew by %d MiB, beyond the bound of %d MiB", grown>>20, bound>>20)
	}
}

// slowServer is a chat Handler with default limits whose hooks record, by
// client name, how each peer was closed and what was reported about it.
type slowServer struct {
	url           string
	opened        chan string
	closed        chan string
	slowConsumers chan string

	mu     sync.Mutex
	closes map[string]int
	errs   map[string][]error
}

func startSlowServer(t *testing.T, room slowRoom) *slowServer {
	t.Helper()
	hub, err := edge.New(edge.Options{OnError: func(err error, info edge.ErrorInfo) {
		t.Errorf("hub error at %s: %v", info.Stage, err)
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hub.Close() })
	peers := room.slow + room.healthy
	s := &slowServer{
		opened:        make(chan string, peers),
		closed:        make(chan string, peers),
		slowConsumers: make(chan string, peers),
		closes:        make(map[string]int),
		errs:          make(map[string][]error),
	}
	channel := testenv.Channel(t)
	hooks := edge.Hooks{
		Upgrade: func(r *http.Request) (edge.Accept, error) {
			return edge.Accept{Attrs: map[string]string{"name": r.URL.Query().Get("name")}}, nil
		},
		Open: func(p edge.Peer) {
			if err := p.Subscribe(context.Background(), channel); err != nil {
				t.Errorf("subscribe: %v", err)
			}
			s.opened <- p.Attr("name")
		},
		Message: func(p edge.Peer, d edge.Data) {
			if err := p.Publish(context.Background(), channel, d); err != nil {
				t.Errorf("publish: %v", err)
			}
		},
		Close: func(p edge.Peer, code int, _ string) {
			s.mu.Lock()
			s.closes[p.Attr("name")] = code
			s.mu.Unlock()
			s.closed <- p.Attr("name")
		},
		Error: func(p edge.Peer, err error) {
			s.mu.Lock()
			s.errs[p.Attr("name")] = append(s.errs[p.Attr("name")], err)
			s.mu.Unlock()
			if errors.Is(err, longlived.ErrSlowConsumer) {
				s.slowConsumers <- p.Attr("name")
			}
		},
	}
	handler := longlived.New(hub, hooks)
	hs := httptest.NewServer(handler)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		if err := handler.Close(ctx); err != nil {
			t.Errorf("close: %v", err)
		}
		hs.Close()
	})
	s.url = "ws" + strings.TrimPrefix(hs.URL, "http") + "/room"
	return s
}

// heapInUse returns the bytes of the heap's spans in use.
func heapInUse() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// sampleHeap samples heapInUse every 50 ms until the returned function is
// called, which returns the highest sample.
func sampleHeap(t *testing.T) func() uint64 {
	var peak atomic.Uint64
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			if h := heapInUse(); h > peak.Load() {
				peak.Store(h)
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	var once sync.Once
	done := func() uint64 {
		once.Do(func() { close(stop); <-stopped })
		return peak.Load()
	}
	t.Cleanup(func() { done() })
	return done
}

// slowClients is the client process of a slowRoom: this test binary, run
// with slowClientsEnv set.
type slowClients struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string // the process's reports, then closed
	exit  chan error
}

func startSlowClients(t *testing.T, url string, room slowRoom) *slowClients {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestSlowClientProcess$", "-test.v")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %d %d %d %d", slowClientsEnv, url, room.slow, room.healthy, room.rate, room.size))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &slowClients{cmd: cmd, stdin: stdin, lines: make(chan string, room.healthy), exit: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if line, ok := strings.CutPrefix(sc.Text(), "report: "); ok {
				c.lines <- line
			} else {
				t.Logf("clients: %s", sc.Text())
			}
		}
		close(c.lines)
		c.exit <- cmd.Wait()
	}()
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
	})
	return c
}

func (c *slowClients) send(command string) { fmt.Fprintln(c.stdin, command) }

// wait returns the reports of the healthy clients once the process exits.
func (c *slowClients) wait(t *testing.T) []string {
	t.Helper()
	c.stdin.Close()
	var report []string
	timeout := time.After(time.Minute)
	for {
		select {
		case line, ok := <-c.lines:
			if !ok {
				if err := <-c.exit; err != nil {
					t.Errorf("client process: %v", err)
				}
				return report
			}
			report = append(report, line)
		case <-timeout:
			t.Fatalf("client process still running; reports so far: %q", report)
		}
	}
}

// TestSlowClientProcess is the client process of testSlowRoom, and skips
// otherwise. It dials the never-reading clients, then the healthy ones;
// on "go" from stdin the healthy ones chat, until "stop" or the end of
// stdin. Then it reports, one line for each healthy client, whether it
// received every message the others sent, and exits, which ends every
// connection.
func TestSlowClientProcess(t *testing.T) {
	spec := os.Getenv(slowClientsEnv)
	if spec == "" {
		t.Skip("the client process of TestSlowConsumersCostHealthyPeersNothing")
	}
	var url string
	var room slowRoom
	if _, err := fmt.Sscan(spec, &url, &room.slow, &room.healthy, &room.rate, &room.size); err != nil {
		t.Fatalf("%s=%q: %v", slowClientsEnv, spec, err)
	}
	ctx := context.Background()
	dial := func(name string) *websocket.Conn {
		dctx, cancel := context.WithTimeout(ctx, wait)
		defer cancel()
		conn, _, err := websocket.Dial(dctx, url+"?name="+name, nil)
		if err != nil {
			t.Fatalf("dial %s: %v", name, err)
		}
		conn.SetReadLimit(1 << 20)
		return conn
	}
	slow := make([]*websocket.Conn, room.slow)
	for i := range slow {
		slow[i] = dial(fmt.Sprintf("slow%d", i)) // never read
	}
	healthy := make([]*websocket.Conn, room.healthy)
	for i := range healthy {
		healthy[i] = dial(fmt.Sprintf("healthy%d", i))
	}

	commands := make(chan string)
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			commands <- sc.Text()
		}
		close(commands)
	}()
	if cmd := <-commands; cmd != "go" {
		t.Fatalf("command %q, want go", cmd)
	}

	// Each reader checks that every sender's messages arrive in order,
	// none missing, and counts them.
	var readers sync.WaitGroup
	defer readers.Wait()
	defer func() { // last: the connections end, and their readers with them
		for _, conn := range append(slow, healthy...) {
			conn.CloseNow()
		}
	}()
	got := make([][]atomic.Int64, room.healthy)
	readErr := make([]chan error, room.healthy)
	progress := make([]chan struct{}, room.healthy) // signalled after each message
	for i, conn := range healthy {
		got[i] = make([]atomic.Int64, room.healthy)
		readErr[i] = make(chan error, 1)
		progress[i] = make(chan struct{}, 1)
		readers.Go(func() {
			for {
				_, b, err := conn.Read(ctx)
				if err != nil {
					readErr[i] <- err
					return
				}
				from, seq, ok := parseChat(b)
				if !ok || from < 0 || from >= room.healthy || from == i || seq != got[i][from].Load() {
					readErr[i] <- fmt.Errorf("unexpected message %.24q", b)
					return
				}
				got[i][from].Add(1)
				select {
				case progress[i] <- struct{}{}:
				default:
				}
			}
		})
	}
	sent := make([]atomic.Int64, room.healthy)
	stop := make(chan struct{})
	var senders sync.WaitGroup
	for i, conn := range healthy {
		senders.Go(func() {
			tick := time.NewTicker(time.Second / time.Duration(room.rate))
			defer tick.Stop()
			for seq := 0; ; seq++ {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				wctx, cancel := context.WithTimeout(ctx, wait)
				err := conn.Write(wctx, websocket.MessageText, chatMessage(i, seq, room.size))
				cancel()
				if err != nil {
					t.Errorf("healthy%d: write: %v", i, err)
					return
				}
				sent[i].Add(1)
			}
		})
	}
	<-commands // "stop", or the test has gone
	close(stop)
	senders.Wait()

	// Messages still in flight arrive within wait, or never.
	expiry, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	for i := range healthy {
		var want int64
		for j := range healthy {
			if j != i {
				want += sent[j].Load()
			}
		}
		received := func() (n int64) {
			for j := range healthy {
				n += got[i][j].Load()
			}
			return n
		}
	wait:
		for received() != want {
			select {
			case <-progress[i]:
			case err := <-readErr[i]:
				fmt.Printf("report: healthy%d received %d of %d messages, then: %v\n", i, received(), want, err)
				break wait
			case <-expiry.Done():
				fmt.Printf("report: healthy%d received %d of %d messages\n", i, received(), want)
				break wait
			}
		}
		if received() == want {
			fmt.Printf("report: ok healthy%d received all %d messages\n", i, want)
		}
	}
}

// chatMessage is message seq of sender from, size bytes long.
func chatMessage(from, seq, size int) []byte {
	b := []byte(strings.Repeat(".", size))
	copy(b, fmt.Sprintf("%d:%d:", from, seq))
	return b
}

// parseChat reads the sender and the sequence number of a chatMessage.
func parseChat(b []byte) (from int, seq int64, ok bool) {
	parts := strings.SplitN(string(b[:min(len(b), 32)]), ":", 3)
	if len(parts) != 3 {
		return 0, 0, false
	}
	from, err1 := strconv.Atoi(parts[0])
	seq, err2 := strconv.ParseInt(parts[1], 10, 64)
	return from, seq, err1 == nil && err2 == nil
}
