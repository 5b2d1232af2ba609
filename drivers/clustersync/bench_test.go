package clustersync

import (
	"testing"

	"github.com/edgesync/edgesync/drivers/drivertest"
)

// BenchmarkRelay measures how many 100-byte messages per second go from one
// hub to another through a clustersync relay: the first hub relays, the
// other is its client.
func BenchmarkRelay(b *testing.B) { drivertest.BenchmarkRelay(b, socketPerChannel()) }

// BenchmarkLatency measures the time from a publish on one hub to a delivery
// on another through a clustersync relay, at 5,000 messages per second.
func BenchmarkLatency(b *testing.B) { drivertest.BenchmarkLatency(b, socketPerChannel(), 5000) }
