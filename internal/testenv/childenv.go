package testenv

import (
	"os"
	"strings"
)

// ChildEnv returns the environment for a program a test runs (a chat
// server, the emulator): this process's environment without any EDGESYNC_
// variable, then extra. The examples read their backplane, channel and
// endpoints from EDGESYNC_ variables, which a test's own environment may
// set for the test itself (EDGESYNC_REDIS_CLUSTER, EDGESYNC_NATS_URL, …):
// a child is given only what its test means it to have.
func ChildEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "EDGESYNC_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}
