package clustersync

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/internal/testenv"
)

// The environment of a helper process.
const (
	helperEnv        = "CLUSTERSYNC_TEST_HELPER" // "1" in a helper process
	helperSocketEnv  = "CLUSTERSYNC_TEST_SOCKET"
	helperChannelEnv = "CLUSTERSYNC_TEST_CHANNEL"
)

// TestHelperProcess is not a test: it is the body of the processes that
// TestProcesses starts, a Hub on clustersync speaking a line protocol.
//
//	stdin:  "pub <text>"  publish text on topic "t", from a member subscribed to it
//	        "role"        ask for the role
//	        end of input  close the hub and exit
//	stdout: "ready"                 subscribed
//	        "got <text>"            the member received text
//	        "role relay|client"     the role
//	        "err <stage> <error>"   the hub's OnError
func TestHelperProcess(t *testing.T) {
	if os.Getenv(helperEnv) != "1" {
		return
	}
	os.Exit(helperMain())
}

// lineWriter writes whole lines from many goroutines.
type lineWriter struct {
	mu sync.Mutex
	w  *bufio.Writer
}

func (lw *lineWriter) println(args ...any) {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	fmt.Fprintln(lw.w, args...)
	lw.w.Flush()
}

// printEndpoint prints what its member receives.
type printEndpoint struct{ out *lineWriter }

func (e printEndpoint) Deliver(d edge.Data)                 { e.out.println("got " + d.String()) }
func (e printEndpoint) Close(code int, reason string) error { return nil }

func helperMain() int {
	out := &lineWriter{w: bufio.NewWriter(os.Stdout)}
	var drv *driver
	newDriver := New(Options{Socket: os.Getenv(helperSocketEnv), Channel: os.Getenv(helperChannelEnv)})
	hub, err := edge.New(edge.Options{
		Sync: func(inst edge.Instance) (edge.Driver, error) {
			d, err := newDriver(inst)
			if err == nil {
				drv = d.(*driver)
			}
			return d, err
		},
		OnError: func(err error, info edge.ErrorInfo) { out.println("err", info.Stage, err) },
	})
	if err != nil {
		out.println("err new", err)
		return 1
	}
	defer hub.Close()
	drv.mu.Lock()
	connected := drv.conn != nil
	drv.mu.Unlock()
	if !connected {
		out.println("err subscribe: not connected")
		return 1
	}
	m, err := hub.Join(edge.NewID(), "/ns", printEndpoint{out})
	if err != nil {
		out.println("err join", err)
		return 1
	}
	if err := m.Subscribe("t"); err != nil {
		out.println("err subscribe", err)
		return 1
	}
	out.println("ready")

	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		cmd, arg, _ := strings.Cut(in.Text(), " ")
		switch cmd {
		case "pub":
			if err := m.Publish(context.Background(), "t", edge.Text(arg)); err != nil {
				out.println("err pub", err)
			}
		case "role":
			if drv.isRelay() {
				out.println("role relay")
			} else {
				out.println("role client")
			}
		}
	}
	if err := hub.Close(); err != nil {
		out.println("err close", err)
		return 1
	}
	return 0
}

// cluster is the helper processes of one test, and what they printed.
type cluster struct {
	t       *testing.T
	socket  string
	channel string
	notify  chan struct{} // signalled after every line of any process
}

// proc is one helper process.
type proc struct {
	c      *cluster
	name   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr bytes.Buffer
	exited chan error // receives the exit status once output is read

	mu    sync.Mutex
	lines []string
	seen  int // lines the test has looked at with expect
}

func (c *cluster) signal() {
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

// spawn starts a helper process.
func (c *cluster) spawn(name string) *proc {
	t := c.t
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), helperEnv+"=1", helperSocketEnv+"="+c.socket, helperChannelEnv+"="+c.channel)
	p := &proc{c: c, name: name, cmd: cmd, exited: make(chan error, 1)}
	cmd.Stderr = &p.stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.stdin = stdin
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			p.mu.Unlock()
			c.signal()
		}
		p.exited <- cmd.Wait()
		c.signal()
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		if t.Failed() {
			t.Logf("%s printed:\n%s\nand on stderr:\n%s", name, strings.Join(p.snapshot(), "\n"), p.stderr.String())
		}
	})
	return p
}

func (p *proc) snapshot() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.lines...)
}

func (p *proc) send(line string) {
	p.c.t.Helper()
	if _, err := io.WriteString(p.stdin, line+"\n"); err != nil {
		p.c.t.Fatalf("%s: %v", p.name, err)
	}
}

// waitFor waits until cond holds, rechecking it after every line printed.
func (c *cluster) waitFor(what string, cond func() bool) {
	c.t.Helper()
	timer := time.NewTimer(waitTimeout)
	defer timer.Stop()
	for !cond() {
		select {
		case <-c.notify:
		case <-timer.C:
			c.t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// expect waits for the next line, after those already expected, that
// starts with prefix, and returns it.
func (p *proc) expect(prefix string) string {
	p.c.t.Helper()
	var found string
	p.c.waitFor(fmt.Sprintf("%s to print %q", p.name, prefix), func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		for ; p.seen < len(p.lines); p.seen++ {
			if strings.HasPrefix(p.lines[p.seen], prefix) {
				found = p.lines[p.seen]
				p.seen++
				return true
			}
		}
		return false
	})
	return found
}

// got counts the texts the process received.
func (p *proc) got() map[string]int {
	counts := make(map[string]int)
	for _, line := range p.snapshot() {
		if text, ok := strings.CutPrefix(line, "got "); ok {
			counts[text]++
		}
	}
	return counts
}

// roles asks every process for its role and returns the relays.
func roles(procs []*proc) []*proc {
	var relays []*proc
	for _, p := range procs {
		p.send("role")
	}
	for _, p := range procs {
		if p.expect("role ") == "role relay" {
			relays = append(relays, p)
		}
	}
	return relays
}

// exchange has every process publish n messages and checks that each
// reaches every other process.
func (c *cluster) exchange(round string, n int, procs []*proc) {
	c.t.Helper()
	for _, p := range procs {
		for i := range n {
			p.send(fmt.Sprintf("pub %s-%s-%d", round, p.name, i))
		}
	}
	c.waitFor(round+" messages to reach every other process", func() bool {
		for _, to := range procs {
			got := to.got()
			for _, from := range procs {
				for i := range n {
					if from != to && got[fmt.Sprintf("%s-%s-%d", round, from.name, i)] == 0 {
						return false
					}
				}
			}
		}
		return true
	})
}

// checkOnce checks that no process received a message twice or its own.
func (c *cluster) checkOnce(procs []*proc) {
	c.t.Helper()
	for _, p := range procs {
		for text, n := range p.got() {
			if n > 1 {
				c.t.Errorf("%s received %q %d times", p.name, text, n)
			}
			if strings.Contains(text, "-"+p.name+"-") {
				c.t.Errorf("%s received its own message %q", p.name, text)
			}
		}
	}
}

// TestProcesses runs a cluster of real processes on one socket: they elect a
// relay, exchange messages, and elect another when the relay is killed.
func TestProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	c := &cluster{t: t, socket: socketPath(t), channel: "procs", notify: make(chan struct{}, 1)}
	procs := []*proc{c.spawn("p0"), c.spawn("p1"), c.spawn("p2")}
	for _, p := range procs {
		p.expect("ready")
	}
	relays := roles(procs)
	if len(relays) != 1 {
		t.Fatalf("%d processes relay, want 1", len(relays))
	}
	c.exchange("first", 20, procs)

	// SIGKILL the relay: the kernel releases its lock, the others elect.
	dead := relays[0]
	if err := dead.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-dead.exited
	var live []*proc
	for _, p := range procs {
		if p != dead {
			live = append(live, p)
		}
	}
	c.probe(live)
	for _, p := range live {
		p.expect("err subscribe ")
	}
	if relays := roles(live); len(relays) != 1 {
		t.Fatalf("%d processes relay after the relay was killed, want 1", len(relays))
	}
	c.exchange("second", 20, live)

	// A newcomer joins the new relay.
	live = append(live, c.spawn("p3"))
	live[2].expect("ready")
	if relays := roles(live); len(relays) != 1 || relays[0] == live[2] {
		t.Fatal("the newcomer took the relay role, or no process relays")
	}
	c.exchange("third", 20, live)
	c.checkOnce(append(live, dead))

	for _, p := range live {
		p.stdin.Close()
	}
	for _, p := range live {
		select {
		case err := <-p.exited:
			if err != nil {
				t.Errorf("%s exited with %v", p.name, err)
			}
		case <-time.After(waitTimeout):
			t.Errorf("%s did not exit after its input ended", p.name)
		}
	}
}

// probe has the processes publish probes until each has received one from
// every other: the way to wait for an election to settle.
func (c *cluster) probe(procs []*proc) {
	c.t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	for i := 0; ; i++ {
		for _, p := range procs {
			p.send(fmt.Sprintf("pub probe-%s-%d", p.name, i))
		}
		select {
		case <-tick.C:
		case <-deadline.C:
			c.t.Fatal("no probe got through after the relay was killed")
		}
		settled := true
		for _, to := range procs {
			for _, from := range procs {
				if from != to && !hasPrefix(to.got(), "probe-"+from.name+"-") {
					settled = false
				}
			}
		}
		if settled {
			return
		}
	}
}

func hasPrefix(texts map[string]int, prefix string) bool {
	for text := range texts {
		if strings.HasPrefix(text, prefix) {
			return true
		}
	}
	return false
}

// TestProcessesSocketRemoved removes the socket file under a cluster of real
// processes: the relay listens again, and a process started after that
// joins the others, in both directions.
func TestProcessesSocketRemoved(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	c := &cluster{t: t, socket: socketPath(t), channel: testenv.Channel(t), notify: make(chan struct{}, 1)}
	procs := []*proc{c.spawn("p0"), c.spawn("p1")}
	for _, p := range procs {
		p.expect("ready")
	}
	relays := roles(procs)
	if len(relays) != 1 {
		t.Fatalf("%d processes relay, want 1", len(relays))
	}
	if err := os.Remove(c.socket); err != nil {
		t.Fatal(err)
	}
	c.exchange("removed", 5, procs)
	relays[0].expect("err subscribe clustersync: relay: socket " + c.socket + " was removed")

	procs = append(procs, c.spawn("p2"))
	procs[2].expect("ready")
	if relays := roles(procs); len(relays) != 1 || relays[0] == procs[2] {
		t.Fatal("the newcomer took the relay role, or no process relays")
	}
	c.exchange("after", 5, procs)
	c.checkOnce(procs)
	for _, p := range procs {
		p.stdin.Close()
	}
	for _, p := range procs {
		if err := testenv.Recv(t, p.exited, waitTimeout, p.name+" to exit"); err != nil {
			t.Errorf("%s exited with %v", p.name, err)
		}
	}
}
