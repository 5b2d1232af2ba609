package tests

import (
	"fmt"
	"os"
	"testing"

	"github.com/edgesync/edgesync/internal/testenv"
	"go.uber.org/goleak"
)

// TestMain makes the directory for the programs the tests build, and
// removes it after them. It fails the tests when any of them leaves a
// goroutine running.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "edgesync-tests")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	testenv.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		os.RemoveAll(dir)
		os.Exit(code)
	}))
}
