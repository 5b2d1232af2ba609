package routes

import (
	"testing"

	"github.com/edgesync/edgesync/internal/testenv"
)

// TestMain fails the tests when any of them leaves a goroutine running.
func TestMain(m *testing.M) { testenv.VerifyTestMain(m) }
