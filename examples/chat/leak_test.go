package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/edgesync/edgesync/internal/testenv"
)

// TestMain removes the chat binary the tests built, after them, and fails
// the tests when any of them leaves a goroutine running.
func TestMain(m *testing.M) {
	code := testenv.RunTests(m)
	if path, err := chatBinary(); err == nil {
		os.RemoveAll(filepath.Dir(path))
	}
	os.Exit(code)
}
