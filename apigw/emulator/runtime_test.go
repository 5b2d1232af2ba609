package emulator_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/edgesync/edgesync/apigw/emulator"
)

// buildFunction builds testdata/fn, a Lambda function using lambda.Start,
// and returns the path of its binary.
func buildFunction(t testing.TB) string {
	t.Helper()
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command to build the test function")
	}
	bin := filepath.Join(t.TempDir(), "bootstrap")
	out, err := exec.Command("go", "build", "-o", bin, "./testdata/fn").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// testWriter sends a process's output to the test log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Logf("function: %s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func newRuntime(t *testing.T, opts emulator.RuntimeOptions) *emulator.Runtime {
	t.Helper()
	if opts.Stderr == nil {
		opts.Stderr = testWriter{t}
	}
	opts.Logger = slog.New(slog.NewTextHandler(testWriter{t}, nil))
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	rt, err := emulator.NewRuntime(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })
	return rt
}

func invoke(t *testing.T, rt *emulator.Runtime, payload string) (map[string]any, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	out, err := rt.Invoke(ctx, []byte(payload))
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("response %q: %v", out, err)
	}
	return m, nil
}

func TestRuntime(t *testing.T) {
	bin := buildFunction(t)
	rt := newRuntime(t, emulator.RuntimeOptions{
		Command: []string{bin}, Procs: 3, Env: []string{"FN_EXTRA=extra"}, FunctionName: "fn", Region: "eu-west-1",
	})
	if cs := rt.ColdStarts(); len(cs) != 3 {
		t.Errorf("ColdStarts() = %v, want one for each of 3 processes", cs)
	}

	t.Run("context and environment", func(t *testing.T) {
		before := time.Now()
		m, err := invoke(t, rt, `{"op":"echo"}`)
		if err != nil {
			t.Fatal(err)
		}
		if m["arn"] != "arn:aws:lambda:eu-west-1:123456789012:function:fn" || m["requestId"] == "" ||
			!strings.HasPrefix(m["trace"].(string), "Root=1-") {
			t.Errorf("context: %v", m)
		}
		if d := time.UnixMilli(int64(m["deadline"].(float64))); d.Before(before.Add(wait-time.Second)) || d.After(time.Now().Add(wait)) {
			t.Errorf("deadline %v: not the invocation's context deadline", d)
		}
		env := m["env"].(map[string]any)
		for k, v := range map[string]string{
			"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "eu-west-1", "AWS_LAMBDA_FUNCTION_NAME": "fn",
			"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128", "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST", "_HANDLER": "bootstrap",
			"LAMBDA_TASK_ROOT": filepath.Dir(bin), "FN_EXTRA": "extra",
		} {
			if env[k] != v {
				t.Errorf("%s=%q, want %q", k, env[k], v)
			}
		}
		for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"} {
			if env[k] == "" {
				t.Errorf("%s is not set", k)
			}
		}
	})

	t.Run("concurrent invocations on three processes", func(t *testing.T) {
		// Each invocation waits until all three are in flight at once.
		var mu sync.Mutex
		arrived := 0
		all := make(chan struct{})
		barrier := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			if arrived++; arrived == 3 {
				close(all)
			}
			mu.Unlock()
			select {
			case <-all:
			case <-r.Context().Done():
			}
		}))
		defer barrier.Close()

		pids := make(chan any, 3)
		var wg sync.WaitGroup
		for range 3 {
			wg.Go(func() {
				m, err := invoke(t, rt, `{"op":"wait","url":"`+barrier.URL+`"}`)
				if err != nil {
					t.Error(err)
					pids <- nil
					return
				}
				pids <- m["pid"]
			})
		}
		wg.Wait()
		close(pids)
		seen := map[any]bool{}
		for pid := range pids {
			seen[pid] = true
		}
		if len(seen) != 3 || seen[nil] {
			t.Errorf("invocations ran on processes %v, want three", seen)
		}
	})

	t.Run("function error", func(t *testing.T) {
		_, err := invoke(t, rt, `{"op":"error"}`)
		var ferr *emulator.FunctionError
		if !errors.As(err, &ferr) || ferr.Message != "asked to fail" || ferr.Type != "errorString" {
			t.Errorf("error %v (%+v), want the function's", err, ferr)
		}
	})

	t.Run("crash and restart", func(t *testing.T) {
		_, err := invoke(t, rt, `{"op":"crash"}`)
		if err == nil || !strings.Contains(err.Error(), "function process exited: exit status 3") {
			t.Errorf("crash: %v", err)
		}
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 3 {
			t.Errorf("crash: %v does not wrap the process's exit status 3", err)
		}
		// All three processes serve again, the crashed one restarted.
		for range 4 {
			if _, err := invoke(t, rt, `{"op":"echo"}`); err != nil {
				t.Fatalf("after a crash: %v", err)
			}
		}
	})
}

func TestRuntimeTimeout(t *testing.T) {
	bin := buildFunction(t)
	rt := newRuntime(t, emulator.RuntimeOptions{Command: []string{bin}, Timeout: 500 * time.Millisecond})
	_, err := invoke(t, rt, `{"op":"hang"}`)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("hung invocation: %v, want the deadline", err)
	}
	// The hung process was killed and restarted.
	if _, err := invoke(t, rt, `{"op":"echo"}`); err != nil {
		t.Errorf("after a timeout: %v", err)
	}
}

func TestRuntimeInitFailure(t *testing.T) {
	bin := buildFunction(t)
	for init, want := range map[string]struct {
		msg  string
		code int
	}{
		"crash": {"function process exited during init: exit status 4", 4},
		"error": {"function init failed (function error: InitError: missing configuration), and its process exited: exit status 1", 1},
	} {
		t.Run(init, func(t *testing.T) {
			rt := newRuntime(t, emulator.RuntimeOptions{Command: []string{bin}, Env: []string{"FN_INIT=" + init}})
			_, err := invoke(t, rt, `{"op":"echo"}`)
			if err == nil || !strings.Contains(err.Error(), want.msg) {
				t.Errorf("invocation: %v, want %q", err, want.msg)
			}
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != want.code {
				t.Errorf("invocation: %v does not wrap the process's exit status %d", err, want.code)
			}
			var ferr *emulator.FunctionError
			if init == "error" && !errors.As(err, &ferr) {
				t.Errorf("init error %v is no FunctionError", err)
			}
		})
	}
}

// TestRuntimeBehindEmulator runs the function binary as the WebSocket API's
// function, posting through the management endpoint it is given.
func TestRuntimeBehindEmulator(t *testing.T) {
	bin := buildFunction(t)
	srv := httptest.NewUnstartedServer(nil)
	endpoint := "http://" + srv.Listener.Addr().String() + "/local"
	rt := newRuntime(t, emulator.RuntimeOptions{Command: []string{bin}, Procs: 2, Env: []string{"EDGESYNC_APIGW_ENDPOINT=" + endpoint}})
	em, err := emulator.New(emulator.Options{Handler: rt, RouteResponses: []string{"$default"}})
	if err != nil {
		t.Fatal(err)
	}
	srv.Config.Handler = em
	srv.Start()
	defer srv.Close()
	defer em.Close()

	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(endpoint, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	send(t, c, "hello")
	if _, got := read(t, c); got != "echo:hello" {
		t.Errorf("received %q", got)
	}
	send(t, c, "post")
	if _, got := read(t, c); got != "posted" {
		t.Errorf("received %q", got)
	}
}
