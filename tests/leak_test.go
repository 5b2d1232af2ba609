package tests

import (
	"fmt"
	"os"
	"testing"

	"github.com/edgesync/edgesync/internal/testenv"
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
	code := testenv.RunTests(m)
	os.RemoveAll(dir)
	os.Exit(code)
}
