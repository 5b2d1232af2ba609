package testenv

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	if os.Getenv(leakEnv) != "" {
		leakWait = time.Second // a copy that leaks on purpose
	}
	VerifyTestMain(m)
}

// leakEnv, set in the environment of a copy of this test binary, makes the
// test it names leak a goroutine.
const leakEnv = "EDGESYNC_TESTENV_LEAK"

// blocked is never closed: a goroutine that waits on it runs until the
// process ends.
var blocked = make(chan struct{})

// TestLeaker leaks a goroutine when leakEnv is "main", for
// TestVerifyTestMainFailsOnLeak. Otherwise it starts one that ends.
func TestLeaker(t *testing.T) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		if os.Getenv(leakEnv) == "main" {
			<-blocked
		}
	}()
	if os.Getenv(leakEnv) != "main" {
		<-done
	}
}

// TestNoneLeaker leaks a goroutine under VerifyNone when leakEnv is
// "none", for TestVerifyNoneFailsOnLeak.
func TestNoneLeaker(t *testing.T) {
	if os.Getenv(leakEnv) != "none" {
		t.Skip("run by TestVerifyNoneFailsOnLeak")
	}
	VerifyNone(t)
	go func() { <-blocked }()
}

// runSelf runs test in a copy of this test binary with leakEnv set to mode,
// and returns its output and whether it passed.
func runSelf(t *testing.T, test, mode string) (string, bool) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+test+"$", "-test.count=1")
	cmd.Env = append(os.Environ(), leakEnv+"="+mode)
	out, err := cmd.CombinedOutput()
	if _, exited := err.(*exec.ExitError); err != nil && !exited {
		t.Fatalf("running %s: %v", test, err)
	}
	return string(out), err == nil
}

func TestVerifyTestMainFailsOnLeak(t *testing.T) {
	if os.Getenv(leakEnv) != "" {
		t.Skip("in a copy")
	}
	t.Parallel()
	out, ok := runSelf(t, "TestLeaker", "main")
	if ok {
		t.Fatalf("a test binary whose test leaked a goroutine passed:\n%s", out)
	}
	if !strings.Contains(out, "TestLeaker.func1") || !strings.Contains(out, "PASS") {
		t.Fatalf("want the test to pass and the leak check to name the leaked goroutine, got:\n%s", out)
	}
	if out, ok := runSelf(t, "TestLeaker", "ends"); !ok {
		t.Fatalf("a test binary whose goroutine ended failed:\n%s", out)
	}
}

func TestVerifyNoneFailsOnLeak(t *testing.T) {
	if os.Getenv(leakEnv) != "" {
		t.Skip("in a copy")
	}
	t.Parallel()
	out, ok := runSelf(t, "TestNoneLeaker", "none")
	if ok {
		t.Fatalf("a test that leaked a goroutine under VerifyNone passed:\n%s", out)
	}
	if !strings.Contains(out, "--- FAIL: TestNoneLeaker") || !strings.Contains(out, "TestNoneLeaker.func1") {
		t.Fatalf("want TestNoneLeaker to fail, naming the leaked goroutine, got:\n%s", out)
	}
}
