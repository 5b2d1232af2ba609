package main

import (
	"os"
	"testing"

	"github.com/edgesync/edgesync/internal/testenv"
)

// TestMain serves the relay when the tests' binary is started as the load
// tool starts itself for -target relay; otherwise it runs the tests, fails
// them when any leaves a goroutine running, and removes the binaries they
// built.
func TestMain(m *testing.M) {
	if addr := os.Getenv(relayEnv); addr != "" {
		os.Exit(serveRelayMain(addr))
	}
	code := testenv.RunTests(m)
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}
