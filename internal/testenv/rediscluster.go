package testenv

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisClusterTimeout bounds every wait of a PrivateRedisCluster: its start, a
// failover.
const RedisClusterTimeout = 30 * time.Second

// clusterNodeTimeout is the cluster-node-timeout of the clusters started
// here: a master that stops answering is failed over within a few seconds.
const clusterNodeTimeout = 1000 // milliseconds

// shared is the Redis Cluster that RedisCluster starts once for the test
// binary when EDGESYNC_REDIS_CLUSTER names none. Its servers end with the
// binary: see startRedisNode.
var shared struct {
	once    sync.Once
	cluster *PrivateRedisCluster // kept: were its pipes collected, its servers would end
	addrs   []string
	err     error
}

// RedisCluster returns the addresses (HOST:PORT) of every node of a Redis
// Cluster for tests that only use it. It is the cluster that
// EDGESYNC_REDIS_CLUSTER names (comma-separated HOST:PORT), when that is set
// and its nodes answer; otherwise a private cluster of three masters with a
// replica each, started once for the test binary and stopped when the
// binary exits. It skips t with a reason (or fails it, see Unavailable)
// when redis-server or redis-cli is missing. A test that kills a node uses
// StartRedisCluster instead.
func RedisCluster(t testing.TB) []string {
	t.Helper()
	if raw := os.Getenv("EDGESYNC_REDIS_CLUSTER"); raw != "" {
		var addrs []string
		for _, a := range strings.Split(raw, ",") {
			if a = strings.TrimSpace(a); a != "" {
				addrs = append(addrs, a)
			}
		}
		if reachable(addrs) {
			return addrs
		}
		t.Logf("EDGESYNC_REDIS_CLUSTER=%s does not answer: starting a Redis Cluster of the tests' own", raw)
	}
	server, cli := redisBinaries(t)
	shared.once.Do(func() {
		dir, err := os.MkdirTemp("", "edgesync-redis-cluster-")
		if err != nil {
			shared.err = err
			return
		}
		// The nodes remove their own directories when they end; dir is
		// left empty.
		c, err := startRedisCluster(server, cli, dir, true)
		if err != nil {
			shared.err = err
			return
		}
		shared.cluster, shared.addrs = c, c.Addrs()
	})
	if shared.err != nil {
		t.Fatalf("starting a Redis Cluster: %v", shared.err)
	}
	return slices.Clone(shared.addrs)
}

// reachable reports whether every address accepts a TCP connection.
func reachable(addrs []string) bool {
	if len(addrs) == 0 {
		return false
	}
	for _, a := range addrs {
		conn, err := net.DialTimeout("tcp", a, 2*time.Second)
		if err != nil {
			return false
		}
		conn.Close()
	}
	return true
}

// redisBinaries returns the paths of redis-server and redis-cli, or skips t
// without them.
func redisBinaries(t testing.TB) (server, cli string) {
	t.Helper()
	find := func(name string) string {
		for _, p := range []string{name, "/usr/bin/" + name, "/usr/local/bin/" + name} {
			if path, err := exec.LookPath(p); err == nil {
				return path
			}
		}
		Unavailable(t, name+" is not installed: no Redis Cluster for the tests")
		return ""
	}
	return find("redis-server"), find("redis-cli")
}

// PrivateRedisCluster is a Redis Cluster of redis-server processes on loopback
// ports, started by StartRedisCluster for one test: three masters with a
// replica each, a cluster-node-timeout of one second.
type PrivateRedisCluster struct {
	mu    sync.Mutex
	nodes []*redisNode
}

// redisNode is one redis-server of a PrivateRedisCluster, run by a small shell
// that kills it when its standard input closes: when the node is stopped,
// and, should the test binary end first, when the binary exits.
type redisNode struct {
	addr   string
	log    string // the server's log file
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	killed bool
}

// StartRedisCluster starts a private Redis Cluster for t in a temporary
// directory, and waits until every node reports cluster_state:ok and every
// replica is in sync with its master. t's cleanup kills the servers it
// started, and only them. It skips t (see Unavailable) when redis-server or
// redis-cli is missing.
func StartRedisCluster(t testing.TB) *PrivateRedisCluster {
	t.Helper()
	server, cli := redisBinaries(t)
	c, err := startRedisCluster(server, cli, t.TempDir(), false)
	if c != nil {
		t.Cleanup(c.stop)
	}
	if err != nil {
		t.Fatalf("starting a Redis Cluster: %v", err)
	}
	return c
}

// startRedisCluster starts six nodes in dir and joins them into a cluster.
// When selfClean, each node removes its directory when it ends. A start
// that fails (a port taken between its choice and the server's bind) is
// tried again, twice, on other ports. On error, nothing is left running.
func startRedisCluster(server, cli, dir string, selfClean bool) (*PrivateRedisCluster, error) {
	var err error
	for range 3 {
		var c *PrivateRedisCluster
		if c, err = startRedisClusterOnce(server, cli, dir, selfClean); err == nil {
			return c, nil
		}
	}
	return nil, err
}

// startRedisClusterOnce is one attempt of startRedisCluster.
func startRedisClusterOnce(server, cli, dir string, selfClean bool) (*PrivateRedisCluster, error) {
	c := &PrivateRedisCluster{}
	ports, err := freeLoopbackPorts(12)
	if err != nil {
		return nil, err
	}
	for i := range 6 {
		n, err := startRedisNode(server, dir, ports[2*i], ports[2*i+1], selfClean)
		if err != nil {
			c.stop()
			return nil, err
		}
		c.nodes = append(c.nodes, n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), RedisClusterTimeout)
	defer cancel()
	for _, n := range c.nodes {
		// A server that answers at all does so at once.
		pctx, pcancel := context.WithTimeout(ctx, RedisClusterTimeout/3)
		err := awaitNode(pctx, n.addr, func(cl *redis.Client) error { return cl.Ping(pctx).Err() })
		pcancel()
		if err != nil {
			log, _ := os.ReadFile(n.log)
			c.stop()
			return nil, fmt.Errorf("%w; its log: %s", err, log)
		}
	}
	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", "1", "--cluster-yes")
	if out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput(); err != nil {
		c.stop()
		return nil, fmt.Errorf("redis-cli --cluster create: %w: %s", err, out)
	}
	if err := c.awaitHealthy(ctx); err != nil {
		c.stop()
		return nil, err
	}
	return c, nil
}

// freeLoopbackPorts returns n different TCP ports of 127.0.0.1 that nothing
// listens on, drawn at random below the kernel's ephemeral range (which the
// outgoing connections of the tests take ports from, and the ports of
// ":0" listeners): all are held at once while they are chosen, so that none
// is handed out twice.
func freeLoopbackPorts(n int) ([]int, error) {
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if v, err := strconv.Atoi(f[0]); err == nil && v > 12000 {
				low = v
			}
		}
	}
	var ports []int
	for tries := 0; len(ports) < n; tries++ {
		if tries > 1000 {
			return nil, errors.New("no free loopback ports below the ephemeral range")
		}
		port := 10000 + rand.IntN(low-10000)
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		defer l.Close()
		ports = append(ports, port)
	}
	return ports, nil
}

// nodeScript runs redis-server ("$0" "$@") in the background, prints its
// pid, and kills it once its own standard input is closed; it then removes
// $EDGESYNC_NODE_RM, when set.
const nodeScript = `"$0" "$@" >"$EDGESYNC_NODE_LOG" 2>&1 </dev/null &
pid=$!
echo "$pid"
while read -r _; do :; done
kill -9 "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
if [ -n "$EDGESYNC_NODE_RM" ]; then rm -rf "$EDGESYNC_NODE_RM"; rmdir "$(dirname "$EDGESYNC_NODE_RM")" 2>/dev/null; fi
exit 0`

// startRedisNode starts one cluster-enabled redis-server on loopback port,
// with its cluster bus on busPort, in a directory of its own under dir.
func startRedisNode(server, dir string, port, busPort int, selfClean bool) (*redisNode, error) {
	nodeDir := filepath.Join(dir, strconv.Itoa(port))
	if err := os.MkdirAll(nodeDir, 0o755); err != nil {
		return nil, err
	}
	cmd := exec.Command("sh", "-c", nodeScript, server,
		"--bind", "127.0.0.1", "--port", strconv.Itoa(port), "--cluster-port", strconv.Itoa(busPort),
		"--cluster-enabled", "yes", "--cluster-config-file", filepath.Join(nodeDir, "nodes.conf"),
		"--cluster-node-timeout", strconv.Itoa(clusterNodeTimeout),
		"--cluster-replica-validity-factor", "0", "--cluster-allow-replica-migration", "no",
		"--dir", nodeDir, "--save", "", "--appendonly", "no", "--daemonize", "no")
	cmd.Env = append(os.Environ(), "EDGESYNC_NODE_LOG="+filepath.Join(nodeDir, "redis.log"))
	if selfClean {
		cmd.Env = append(cmd.Env, "EDGESYNC_NODE_RM="+nodeDir)
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting redis-server: %w", err)
	}
	n := &redisNode{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), log: filepath.Join(nodeDir, "redis.log"), cmd: cmd, stdin: stdin}
	if _, err := bufio.NewReader(stdout).ReadString('\n'); err != nil {
		n.kill()
		return nil, fmt.Errorf("redis-server on port %d did not start: %w", port, err)
	}
	return n, nil
}

// kill stops the node's server and waits until its shell has ended.
func (n *redisNode) kill() {
	if n.killed {
		return
	}
	n.killed = true
	_ = n.stdin.Close()
	_ = n.cmd.Wait()
}

// stop kills every node that is still running.
func (c *PrivateRedisCluster) stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range c.nodes {
		n.kill()
	}
}

// awaitNode calls check with a client of addr until it returns nil or ctx
// is done.
func awaitNode(ctx context.Context, addr string, check func(*redis.Client) error) error {
	cl := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: time.Second})
	defer cl.Close()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		err := check(cl)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("redis-server at %s: %w (last: %v)", addr, ctx.Err(), err)
		case <-tick.C:
		}
	}
}

// Addrs returns the addresses of every node, killed or not.
func (c *PrivateRedisCluster) Addrs() []string {
	var out []string
	for _, n := range c.nodes {
		out = append(out, n.addr)
	}
	return out
}

// live returns the addresses of the nodes not killed.
func (c *PrivateRedisCluster) live() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, n := range c.nodes {
		if !n.killed {
			out = append(out, n.addr)
		}
	}
	return out
}

// clusterNode is one line of CLUSTER NODES.
type clusterNode struct {
	id, addr, master string // master: the id of its master, "-" for a master
	isMaster, failed bool
}

// clusterNodes returns what the node at addr knows of the cluster.
func clusterNodes(ctx context.Context, cl *redis.Client) ([]clusterNode, error) {
	raw, err := cl.ClusterNodes(ctx).Result()
	if err != nil {
		return nil, err
	}
	var out []clusterNode
	for line := range strings.Lines(raw) {
		f := strings.Fields(line)
		if len(f) < 8 {
			continue
		}
		addr, _, _ := strings.Cut(f[1], "@")
		flags := strings.Split(f[2], ",")
		out = append(out, clusterNode{
			id: f[0], addr: addr, master: f[3],
			isMaster: slices.Contains(flags, "master"),
			failed:   slices.Contains(flags, "fail") || slices.Contains(flags, "fail?"),
		})
	}
	return out, nil
}

// awaitHealthy waits until every live node reports cluster_state:ok, knows
// every node, counts three masters that are not failed, and, for a
// replica, is in sync with its master.
func (c *PrivateRedisCluster) awaitHealthy(ctx context.Context) error {
	for _, addr := range c.live() {
		err := awaitNode(ctx, addr, func(cl *redis.Client) error {
			info, err := cl.ClusterInfo(ctx).Result()
			if err != nil {
				return err
			}
			if !strings.Contains(info, "cluster_state:ok") {
				return errors.New("cluster_state is not ok")
			}
			nodes, err := clusterNodes(ctx, cl)
			if err != nil {
				return err
			}
			masters := 0
			for _, n := range nodes {
				if n.isMaster && !n.failed {
					masters++
				}
			}
			if masters != 3 {
				return fmt.Errorf("%d masters up, want 3", masters)
			}
			repl, err := cl.Info(ctx, "replication").Result()
			if err != nil {
				return err
			}
			if strings.Contains(repl, "role:slave") && !strings.Contains(repl, "master_link_status:up") {
				return errors.New("the replica is not in sync with its master")
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// Masters returns the addresses of the masters, as a live node sees them,
// sorted.
func (c *PrivateRedisCluster) Masters(t testing.TB) []string {
	t.Helper()
	nodes := c.nodesOf(t)
	var out []string
	for _, n := range nodes {
		if n.isMaster && !n.failed {
			out = append(out, n.addr)
		}
	}
	slices.Sort(out)
	return out
}

// nodesOf returns CLUSTER NODES of the first live node.
func (c *PrivateRedisCluster) nodesOf(t testing.TB) []clusterNode {
	t.Helper()
	live := c.live()
	if len(live) == 0 {
		t.Fatal("every node of the Redis Cluster is killed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), RedisClusterTimeout)
	defer cancel()
	cl := redis.NewClient(&redis.Options{Addr: live[0]})
	defer cl.Close()
	nodes, err := clusterNodes(ctx, cl)
	if err != nil {
		t.Fatalf("CLUSTER NODES at %s: %v", live[0], err)
	}
	return nodes
}

// KillMaster kills the server of the master at addr, at once (SIGKILL),
// and returns the address of its replica, which the cluster is to promote.
func (c *PrivateRedisCluster) KillMaster(t testing.TB, addr string) (replica string) {
	t.Helper()
	nodes := c.nodesOf(t)
	var id string
	for _, n := range nodes {
		if n.addr == addr {
			if !n.isMaster {
				t.Fatalf("%s is not a master", addr)
			}
			id = n.id
		}
	}
	for _, n := range nodes {
		if id != "" && n.master == id {
			replica = n.addr
		}
	}
	if replica == "" {
		t.Fatalf("the master %s has no replica", addr)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range c.nodes {
		if n.addr == addr {
			n.kill()
			return replica
		}
	}
	t.Fatalf("%s is not a node of this cluster", addr)
	return ""
}

// AwaitPromoted waits until replica is a master and every live node reports
// the cluster healthy again, and fails t after RedisClusterTimeout.
func (c *PrivateRedisCluster) AwaitPromoted(t testing.TB, replica string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), RedisClusterTimeout)
	defer cancel()
	err := awaitNode(ctx, replica, func(cl *redis.Client) error {
		role, err := cl.Do(ctx, "ROLE").Slice()
		if err != nil {
			return err
		}
		if len(role) == 0 || role[0] != "master" {
			return fmt.Errorf("role %v", role)
		}
		return nil
	})
	if err == nil {
		err = c.awaitHealthy(ctx)
	}
	if err != nil {
		t.Fatalf("the replica %s was not promoted: %v", replica, err)
	}
}
