package testenv

import (
	"testing"

	"go.uber.org/goleak"
)

// VerifyTestMain runs the tests of m and exits with their status. When they
// all pass, it then fails the test binary if goroutines are still running
// that the tests started: every hub, handler, driver, server and client a
// test opens must be closed, and all it started must have ended, by the
// time the tests are done. Every test package calls it from its TestMain.
//
// The options every package shares come from LeakOptions; opts add to them
// for one package.
func VerifyTestMain(m *testing.M, opts ...goleak.Option) {
	goleak.VerifyTestMain(m, LeakOptions(opts...)...)
}

// VerifyNone fails t if goroutines are running that were not running when
// VerifyNone was set up, once t and its cleanups are done. It is for a test
// that proves a leak fixed: such a test must not call t.Parallel, so that
// no other test starts goroutines meanwhile.
func VerifyNone(t *testing.T, opts ...goleak.Option) {
	t.Helper()
	opts = LeakOptions(append(opts, goleak.IgnoreCurrent())...)
	t.Cleanup(func() { goleak.VerifyNone(t, opts...) })
}

// LeakOptions returns the goleak options that every package's leak check
// uses, followed by extra.
func LeakOptions(extra ...goleak.Option) []goleak.Option {
	var opts []goleak.Option
	return append(opts, extra...)
}
