package drivertest

import (
	"os"
	"time"
)

// A suite run on a broken implementation fails by meeting its deadlines:
// shorten them there.
func init() {
	if os.Getenv(BrokenEnv) != "" {
		waitTimeout = 2 * time.Second
		bulkTimeout = 2 * time.Second
	}
}

// BrokenEnv names the implementation that TestBroken runs the suite against.
const BrokenEnv = "DRIVERTEST_BROKEN"
