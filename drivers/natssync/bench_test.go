package natssync_test

import (
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/edgesync/edgesync/drivers/drivertest"
	"github.com/edgesync/edgesync/drivers/natssync"
	"github.com/edgesync/edgesync/edge"
)

// BenchmarkRelay measures how many 100-byte messages per second one hub
// relays to another through NATS.
func BenchmarkRelay(b *testing.B) { drivertest.BenchmarkRelay(b, benchSync) }

// BenchmarkLatency measures the time from a publish on one hub to a delivery
// on another through NATS, at 5,000 messages per second.
func BenchmarkLatency(b *testing.B) { drivertest.BenchmarkLatency(b, benchSync, 5000) }

// benchSync gives each instance a connection of its own, as two processes
// would have.
func benchSync(tb testing.TB, channel string) edge.Sync {
	return natssync.New(natssync.Options{Conn: connect(tb, nats.NoEcho()), Channel: channel})
}
