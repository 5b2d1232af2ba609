package tests

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/edgesync/edgesync/internal/testenv"
)

// These tests run the chat Lambda as AWS runs it: the bootstrap binary that
// template.yaml's build makes (tag lambda.norpc, stripped), in several
// processes under the API Gateway emulator's Lambda Runtime API, each
// process one invocation at a time, the Registry in Redis or Postgres.

func TestChatLambdaProcessesRedis(t *testing.T) {
	testChatLambdaProcesses(t, "EDGESYNC_REDIS_URL="+testenv.RedisURL(t))
}

func TestChatLambdaProcessesPostgres(t *testing.T) {
	testChatLambdaProcesses(t, "EDGESYNC_POSTGRES_URL="+testenv.PostgresURL(t))
}

func testChatLambdaProcesses(t *testing.T, backplane string) {
	t.Parallel()
	url := startEmulator(t, lambdaBinary(t), 3, backplane, "EDGESYNC_CHANNEL="+testenv.Channel(t))

	// Six clients connect at once: their $connect invocations run on the
	// three processes together.
	clients := make([]*client, 6)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() { clients[i] = dial(t, url) })
	}
	wg.Wait()

	// Every client says something at once; every other client hears it,
	// whichever process handled the message, and the speaker does not.
	for i, c := range clients {
		wg.Go(func() { c.send(t, websocket.MessageText, fmt.Sprintf(`{"user":"u%d","text":"hello"}`, i)) })
	}
	wg.Wait()
	for i, c := range clients {
		got := map[string]int{}
		for range len(clients) - 1 {
			got[c.next(t).data]++
		}
		for j := range clients {
			want := 1
			if j == i {
				want = 0
			}
			if n := got[fmt.Sprintf(`{"user":"u%d","text":"hello"}`, j)]; n != want {
				t.Fatalf("client %d received u%d's message %d times, want %d (all: %v)", i, j, n, want, got)
			}
		}
	}
	// Nothing more is on its way: the next message each receives is the
	// last one sent.
	clients[0].send(t, websocket.MessageText, `{"user":"u0","text":"end"}`)
	for _, c := range clients[1:] {
		if f := c.next(t); f.data != `{"user":"u0","text":"end"}` {
			t.Fatalf("received %q, want the end marker", f.data)
		}
	}
}

var buildLambda = sync.OnceValues(func() (string, error) {
	path := filepath.Join(binDir, "bootstrap")
	cmd := exec.Command("go", "build", "-tags", "lambda.norpc", "-trimpath", "-ldflags=-s -w", "-o", path, "github.com/edgesync/edgesync/examples/chat-lambda")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build bootstrap: %v\n%s", err, out)
	}
	return path, nil
})

var buildEmulator = sync.OnceValues(func() (string, error) {
	path := filepath.Join(binDir, "apigw-emulator")
	if out, err := exec.Command("go", "build", "-o", path, "github.com/edgesync/edgesync/apigw/emulator/cmd/apigw-emulator").CombinedOutput(); err != nil {
		return "", fmt.Errorf("build apigw-emulator: %v\n%s", err, out)
	}
	return path, nil
})

// lambdaBinary returns the chat Lambda's bootstrap, built as template.yaml
// builds it, for this machine.
func lambdaBinary(t *testing.T) string {
	t.Helper()
	path, err := buildLambda()
	if err != nil {
		t.Fatal(err)
	}
	return path
}

var emulatorURL = regexp.MustCompile(`^WebSocket URL: (\S+)`)

// startEmulator runs the apigw-emulator command around procs processes of
// the Lambda binary fn, with env in the function's environment, and returns
// the WebSocket URL. The emulator is stopped with SIGTERM when the test ends.
func startEmulator(t *testing.T, fn string, procs int, env ...string) string {
	t.Helper()
	bin, err := buildEmulator()
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"-addr", "127.0.0.1:0", "-procs", fmt.Sprint(procs)}
	for _, kv := range env {
		args = append(args, "-env", kv)
	}
	cmd := exec.Command(bin, append(append(args, "--"), fn)...)
	cmd.Env = testenv.ChildEnv()
	cmd.Stderr = testLog{t, "apigw-emulator"}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var exitErr error
	exited := make(chan struct{}) // closed once the emulator has exited; exitErr is then set
	url := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if m := emulatorURL.FindStringSubmatch(sc.Text()); m != nil {
				url <- m[1]
			}
		}
		exitErr = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
			if exitErr != nil {
				t.Errorf("apigw-emulator: %v", exitErr)
			}
		case <-time.After(wait):
			_ = cmd.Process.Kill()
			t.Errorf("apigw-emulator did not stop within %v", wait)
			<-exited
		}
	})
	select {
	case u := <-url:
		return u
	case <-exited:
		t.Fatalf("apigw-emulator exited: %v", exitErr)
	case <-time.After(wait):
		t.Fatal("apigw-emulator did not start")
	}
	return ""
}

// testLog writes what a process prints to the test's log.
type testLog struct {
	t    *testing.T
	name string
}

func (l testLog) Write(p []byte) (int, error) {
	l.t.Logf("%s: %s", l.name, p)
	return len(p), nil
}
