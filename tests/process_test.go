package tests

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/edgesync/edgesync/internal/testenv"
)

// These tests run the chat example as separate OS processes, three to a
// cluster, with real WebSocket clients on each.

func TestChatProcessesRedis(t *testing.T) {
	url := testenv.RedisURL(t)
	testChatProcesses(t, "-redis", url, "-channel", testenv.Channel(t))
}

func TestChatProcessesPostgres(t *testing.T) {
	url := testenv.PostgresURL(t)
	testChatProcesses(t, "-postgres", url, "-channel", testenv.Channel(t))
}

func TestChatProcessesCluster(t *testing.T) {
	dir, err := os.MkdirTemp("", "chat") // Unix socket paths are short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	testChatProcesses(t, "-cluster", filepath.Join(dir, "chat.sock"))
}

// TestChatClusterRelayKilled kills the chat process that relays for the
// others: the two left elect a new relay and the chat goes on.
func TestChatClusterRelayKilled(t *testing.T) {
	t.Parallel()
	dir, err := os.MkdirTemp("", "chat")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := chatBinary(t)
	socket := filepath.Join(dir, "chat.sock")
	relay := startChat(t, bin, "-cluster", socket) // the first to start relays
	a := startChat(t, bin, "-cluster", socket)
	b := startChat(t, bin, "-cluster", socket)
	ca, cb := dial(t, "ws://"+a.addr+"/_ws"), dial(t, "ws://"+b.addr+"/_ws")
	stream(t, ca, cb, "before", 100)

	relay.kill(t)
	awaitRelay(t, ca, cb)
	stream(t, ca, cb, "after the relay died", 100)
	stream(t, cb, ca, "and back", 100)
}

func testChatProcesses(t *testing.T, args ...string) {
	t.Parallel()
	bin := chatBinary(t)
	var clients []*client
	for range 3 {
		p := startChat(t, bin, args...)
		clients = append(clients, dial(t, "ws://"+p.addr+"/_ws"), dial(t, "ws://"+p.addr+"/_ws"))
	}
	for round, prefix := range []string{"hello", "end"} {
		for i, c := range clients {
			c.send(t, websocket.MessageText, fmt.Sprintf("%s from %d", prefix, i))
		}
		for i, c := range clients {
			want := make(map[string]bool)
			for j := range clients {
				if j != i {
					want[fmt.Sprintf("%s from %d", prefix, j)] = true
				}
			}
			for len(want) > 0 {
				f := c.next(t)
				if !want[f.data] {
					t.Fatalf("round %d, client %d: unexpected %q (own, duplicate or early)", round, i, f.data)
				}
				delete(want, f.data)
			}
		}
	}
}

// chatBinary builds examples/chat once for the whole test binary.
func chatBinary(t *testing.T) string {
	t.Helper()
	path, err := buildChat()
	if err != nil {
		t.Fatal(err)
	}
	return path
}

var buildChat = sync.OnceValues(func() (string, error) { return build("chat") })

// build builds examples/name into binDir.
func build(name string) (string, error) {
	path := filepath.Join(binDir, name)
	out, err := exec.Command("go", "build", "-o", path, "github.com/edgesync/edgesync/examples/"+name).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build %s: %v\n%s", name, err, out)
	}
	return path, nil
}

// binDir holds the programs the tests build.
var binDir string

var listening = regexp.MustCompile(`chat listening addr=(\S+)`)

// chatProcess is one running chat server.
type chatProcess struct {
	addr   string
	cmd    *exec.Cmd
	killed bool
}

// kill ends the process at once, as a crash would.
func (p *chatProcess) kill(t *testing.T) {
	t.Helper()
	p.killed = true
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
}

// startChat starts one chat process on a free port and returns it once it
// listens. Unless killed, the process is stopped with SIGTERM at cleanup,
// and must exit cleanly.
func startChat(t *testing.T, bin string, args ...string) *chatProcess {
	t.Helper()
	return startProgram(t, bin, listening, nil, args...)
}

// startProgram starts an example program on a free port, with env added to
// an environment that names no backplane, and returns it once it has logged
// the address it listens on, the first group of listening.
func startProgram(t *testing.T, bin string, listening *regexp.Regexp, env []string, args ...string) *chatProcess {
	t.Helper()
	name := filepath.Base(bin)
	cmd := exec.Command(bin, append([]string{"-addr", "127.0.0.1:0"}, args...)...)
	cmd.Env = testenv.ChildEnv(env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &chatProcess{cmd: cmd}
	var exitErr error
	exited := make(chan struct{}) // closed once the process has exited; exitErr is then set
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			t.Logf("%s %d: %s", name, cmd.Process.Pid, sc.Text())
			if m := listening.FindStringSubmatch(sc.Text()); m != nil {
				addr <- m[1]
			}
		}
		exitErr = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		if !p.killed {
			cmd.Process.Signal(syscall.SIGTERM)
		}
		select {
		case <-exited:
		case <-time.After(wait):
			cmd.Process.Kill()
			<-exited
			t.Errorf("%s did not stop within %v of SIGTERM", name, wait)
			return
		}
		if exitErr != nil && !p.killed {
			t.Errorf("%s exited: %v", name, exitErr)
		}
	})
	select {
	case p.addr = <-addr:
		return p
	case <-exited:
		t.Fatalf("%s exited before listening: %v", name, exitErr)
	case <-time.After(wait):
		t.Fatalf("%s did not listen", name)
	}
	return nil
}
