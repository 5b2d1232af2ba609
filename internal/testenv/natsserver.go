package testenv

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// natsStartTimeout bounds how long a private nats-server may take to answer,
// and a cluster to link its routes.
const natsStartTimeout = 10 * time.Second

// NATSServer is a nats-server process of the test's own, on free loopback
// ports, for tests that stop a server (the shared one is never stopped). It
// is killed when the test ends.
type NATSServer struct {
	// URL is where clients connect: nats://127.0.0.1:<port>.
	URL string
	// ClusterURL is where the other nodes of its cluster route to; empty
	// for a server alone.
	ClusterURL string

	args    []string // of the command, the same at every start
	path    string
	monitor string // 127.0.0.1:<port>, the monitoring endpoint (HTTP)

	mu     sync.Mutex
	cmd    *exec.Cmd
	out    *headBuffer   // the start of cmd's output
	exited chan struct{} // closed when cmd has exited
}

// headBuffer keeps the first bytes written to it, enough for a server's
// start-up messages, and drops the rest.
type headBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (b *headBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p[:min(len(p), max(0, 8<<10-len(b.buf)))]...)
	return len(p), nil
}

func (b *headBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}

// StartNATS starts a nats-server of the test's own and waits until it
// accepts clients. The test is skipped, or failed under
// EDGESYNC_REQUIRE_SERVICES=1, when nats-server is not installed.
func StartNATS(t testing.TB) *NATSServer {
	t.Helper()
	path := natsServerPath(t)
	ports := freePorts(t, 2)
	port, mport := ports[0], ports[1]
	s := &NATSServer{
		URL:     "nats://127.0.0.1:" + port,
		path:    path,
		monitor: "127.0.0.1:" + mport,
		args:    []string{"-a", "127.0.0.1", "-p", port, "-m", mport},
	}
	s.Restart(t)
	return s
}

// StartNATSCluster starts a cluster of n nats-server processes of the test's
// own, each routing to every other one, and waits until every node accepts
// clients and has a route to every other node. Interest still spreads
// between the nodes in the background: a subscription made on one node
// reaches the others a moment later.
func StartNATSCluster(t testing.TB, n int) []*NATSServer {
	t.Helper()
	if n < 1 {
		t.Fatalf("StartNATSCluster: %d nodes", n)
	}
	path := natsServerPath(t)
	name := fmt.Sprintf("edgesync-test-%d-%d", n, rand.Uint64())
	nodes := make([]*NATSServer, n)
	ports := freePorts(t, 3*n)
	for i := range nodes {
		port, cport, mport := ports[3*i], ports[3*i+1], ports[3*i+2]
		nodes[i] = &NATSServer{
			URL:        "nats://127.0.0.1:" + port,
			ClusterURL: "nats://127.0.0.1:" + cport,
			path:       path,
			monitor:    "127.0.0.1:" + mport,
			args: []string{"-a", "127.0.0.1", "-p", port, "-m", mport, "-n", fmt.Sprintf("node-%d", i),
				"--cluster_name", name, "--cluster", "nats://127.0.0.1:" + cport},
		}
	}
	for i, s := range nodes {
		var routes []string
		for j, o := range nodes {
			if j != i {
				routes = append(routes, o.ClusterURL)
			}
		}
		if len(routes) > 0 {
			s.args = append(s.args, "--routes", strings.Join(routes, ","))
		}
	}
	for _, s := range nodes {
		s.start(t)
	}
	for _, s := range nodes {
		s.waitReady(t, n-1)
	}
	return nodes
}

// NATSURLs returns the client URLs of servers, comma-separated: the form
// nats.Connect takes for a list of servers to fail over between.
func NATSURLs(servers []*NATSServer) string {
	urls := make([]string, len(servers))
	for i, s := range servers {
		urls[i] = s.URL
	}
	return strings.Join(urls, ",")
}

// Restart starts the server again, with the same ports and options, after
// Stop, and waits until it accepts clients and, in a cluster, has a route
// to another node.
func (s *NATSServer) Restart(t testing.TB) {
	t.Helper()
	s.start(t)
	routes := 0
	if s.ClusterURL != "" {
		routes = 1
	}
	s.waitReady(t, routes)
}

// start runs the command, killed when t ends.
func (s *NATSServer) start(t testing.TB) {
	t.Helper()
	cmd := exec.Command(s.path, s.args...)
	out := new(headBuffer)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting nats-server: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	s.mu.Lock()
	s.cmd, s.out, s.exited = cmd, out, exited
	s.mu.Unlock()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
}

// Stop kills the server (SIGKILL: no goodbye to its clients or routes) and
// waits until it has exited. It is idempotent.
func (s *NATSServer) Stop() {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Kill()
	<-exited
}

// waitReady waits until the server accepts TCP connections on its client
// port and its monitoring endpoint lists at least routes routes.
func (s *NATSServer) waitReady(t testing.TB, routes int) {
	t.Helper()
	s.mu.Lock()
	exited, out := s.exited, s.out
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), natsStartTimeout)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		if last = s.ready(ctx, routes); last == nil {
			return
		}
		select {
		case <-tick.C:
		case <-exited:
			t.Fatalf("nats-server %s exited: %v\n%s", s.URL, last, out)
		case <-ctx.Done():
			t.Fatalf("nats-server %s not ready within %v: %v", s.URL, natsStartTimeout, last)
		}
	}
}

// ready returns nil once the server answers and has at least routes routes.
func (s *NATSServer) ready(ctx context.Context, routes int) error {
	conn, err := net.DialTimeout("tcp", strings.TrimPrefix(s.URL, "nats://"), time.Second)
	if err != nil {
		return err
	}
	conn.Close()
	if routes == 0 {
		return nil
	}
	n, err := s.Routes(ctx)
	if err != nil {
		return err
	}
	if n < routes {
		return fmt.Errorf("%d routes, want %d", n, routes)
	}
	return nil
}

// Routes returns how many routes to other nodes the server has now, as its
// monitoring endpoint (/routez) lists them.
func (s *NATSServer) Routes(ctx context.Context) (int, error) {
	// One request on a connection of its own, closed after it: no
	// client keeps a connection, or a goroutine, past the call.
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", s.monitor)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	if deadline, ok := ctx.Deadline(); ok {
		conn.SetDeadline(deadline)
	}
	if _, err := io.WriteString(conn, "GET /routez HTTP/1.0\r\nHost: "+s.monitor+"\r\n\r\n"); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("/routez: %s", resp.Status)
	}
	var rz struct {
		NumRoutes int `json:"num_routes"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&rz); err != nil {
		return 0, fmt.Errorf("/routez: %w", err)
	}
	return rz.NumRoutes, nil
}

// FreePort returns a TCP port of 127.0.0.1 that nothing listens on now,
// for a child process to listen on. It is drawn below the kernel's
// ephemeral range, so that no outgoing connection of a test, and no ":0"
// listener, takes it before the child binds it.
func FreePort(t testing.TB) string {
	t.Helper()
	return freePorts(t, 1)[0]
}

// freePorts returns n different ports as FreePort chooses them.
func freePorts(t testing.TB, n int) []string {
	t.Helper()
	ports, err := freeLoopbackPorts(n)
	if err != nil {
		t.Fatal(err)
	}
	s := make([]string, n)
	for i, p := range ports {
		s[i] = strconv.Itoa(p)
	}
	return s
}

// natsServerPath returns the nats-server binary, or skips t without one.
func natsServerPath(t testing.TB) string {
	t.Helper()
	for _, p := range []string{"nats-server", "/usr/sbin/nats-server"} {
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	Unavailable(t, "nats-server is not installed")
	return ""
}
