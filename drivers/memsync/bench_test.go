package memsync_test

import (
	"testing"

	"github.com/edgesync/edgesync/drivers/drivertest"
)

// BenchmarkRelay measures how many 100-byte messages per second one hub
// relays to another through a Bus.
func BenchmarkRelay(b *testing.B) { drivertest.BenchmarkRelay(b, busSync()) }

// BenchmarkLatency measures the time from a publish on one hub to a delivery
// on another through a Bus, at 5,000 messages per second.
func BenchmarkLatency(b *testing.B) { drivertest.BenchmarkLatency(b, busSync(), 5000) }
