package testenv_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/edgesync/edgesync/internal/testenv"
)

func TestChildEnv(t *testing.T) {
	t.Setenv("EDGESYNC_REDIS_CLUSTER", "127.0.0.1:7000")
	t.Setenv("EDGESYNC_TEST_KEPT_OUT", "1")
	env := testenv.ChildEnv("EDGESYNC_CHANNEL=c")
	for _, kv := range env {
		if strings.HasPrefix(kv, "EDGESYNC_") && kv != "EDGESYNC_CHANNEL=c" {
			t.Errorf("the child inherits %s", kv)
		}
	}
	if !slices.Contains(env, "EDGESYNC_CHANNEL=c") {
		t.Error("the extra variable is missing")
	}
	if !slices.ContainsFunc(env, func(kv string) bool { return strings.HasPrefix(kv, "PATH=") }) {
		t.Error("PATH is missing")
	}
}
