package testenv

import (
	"testing"
	"time"
)

// Recv returns the next value on ch, or fails t, naming what it waited for,
// when none comes within timeout.
func Recv[T any](t testing.TB, ch <-chan T, timeout time.Duration, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(timeout):
		t.Fatalf("nothing received within %v: waited for %s", timeout, what)
		panic("unreachable")
	}
}
