package testenv

import (
	"fmt"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// leakWait bounds how long a leak check waits for goroutines to end. A
// closed hub, handler, driver or server may leave goroutines that are on
// their way out (a connection's reader seeing the close); on a loaded
// machine they can take a while. A goroutine still running after leakWait
// is a leak. It is a variable only so that this package's own tests can
// fail faster.
var leakWait = 10 * time.Second

// VerifyTestMain runs the tests of m and exits with the code of RunTests.
// A package's TestMain is
//
//	func TestMain(m *testing.M) { testenv.VerifyTestMain(m) }
func VerifyTestMain(m *testing.M, opts ...goleak.Option) {
	os.Exit(RunTests(m, opts...))
}

// RunTests runs the tests of m and returns the code to exit with. When they
// all pass, it then checks that no goroutine the tests started is still
// running: every hub, handler, driver, server and client a test opens must
// be closed, and all it started must have ended, by the time the tests are
// done. It waits up to ten seconds for them to end, then prints the stack of
// each one left and returns 1.
//
// opts are goleak options for one package, such as a goroutine it lets run;
// each must say why that goroutine is not a leak.
func RunTests(m *testing.M, opts ...goleak.Option) int {
	code := m.Run()
	if code != 0 {
		return code
	}
	if err := findLeaks(opts); err != nil {
		fmt.Fprintf(os.Stderr, "goleak: goroutines still running %v after the tests passed: %v\n", leakWait, err)
		return 1
	}
	return 0
}

// VerifyNone fails t if, once t and the cleanups it registered after
// VerifyNone have run, goroutines are running that were not running when
// VerifyNone was called. It is for a test that proves a leak fixed, and is
// called first in it. Such a test must not call t.Parallel, so that no
// other test starts goroutines meanwhile.
func VerifyNone(t *testing.T, opts ...goleak.Option) {
	t.Helper()
	opts = append(opts, goleak.IgnoreCurrent())
	t.Cleanup(func() {
		if err := findLeaks(opts); err != nil {
			t.Errorf("goroutines still running %v after the test: %v", leakWait, err)
		}
	})
}

// findLeaks returns goleak's report of the goroutines not excused by opts
// that are still running after leakWait, or nil when there are none.
func findLeaks(opts []goleak.Option) error {
	deadline := time.Now().Add(leakWait)
	for {
		// Find itself waits a little for goroutines to end before it
		// reports them; it is called again until the deadline.
		err := goleak.Find(opts...)
		if err == nil || time.Now().After(deadline) {
			return err
		}
	}
}
