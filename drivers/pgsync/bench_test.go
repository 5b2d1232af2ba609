package pgsync_test

import (
	"testing"

	"github.com/edgesync/edgesync/drivers/drivertest"
	"github.com/edgesync/edgesync/drivers/pgsync"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/internal/testenv"
)

// BenchmarkRelay measures how many 100-byte messages per second one hub
// relays to another through Postgres.
func BenchmarkRelay(b *testing.B) { drivertest.BenchmarkRelay(b, benchSync(b)) }

// BenchmarkLatency measures the time from a publish on one hub to a delivery
// on another through Postgres, at 5,000 messages per second.
func BenchmarkLatency(b *testing.B) { drivertest.BenchmarkLatency(b, benchSync(b), 5000) }

// benchSync returns the Sync of instances that share one pool.
func benchSync(b *testing.B) func(tb testing.TB, channel string) edge.Sync {
	pool := newPool(b, testenv.PostgresURL(b))
	return func(_ testing.TB, channel string) edge.Sync {
		return pgsync.New(pgsync.Options{Pool: pool, Channel: channel})
	}
}
