package drivertest_test

import (
	"testing"

	"github.com/edgesync/edgesync/drivers/drivertest"
	"github.com/edgesync/edgesync/drivers/memsync"
	"github.com/edgesync/edgesync/edge"
)

// A driver's package runs the suite from one of its tests, here for memsync.
// newSync is called once per instance, each time for a channel of its own
// case.
func ExampleRunDriverTests() {
	testConformance := func(t *testing.T) {
		var bus memsync.Bus
		drivertest.RunDriverTests(t, func(tb testing.TB, channel string) edge.Sync {
			return memsync.New(memsync.Options{Bus: &bus, Channel: channel})
		})
	}
	_ = testConformance // func TestConformance(t *testing.T) { testConformance(t) }
}

// A Registry's package runs the suite from one of its tests. The cases use
// random ids, so one shared Registry serves them all.
func ExampleRunRegistryTests() {
	testRegistry := func(t *testing.T) {
		reg := memsync.NewRegistry(memsync.RegistryOptions{})
		drivertest.RunRegistryTests(t, func(tb testing.TB) edge.Registry { return reg })
	}
	_ = testRegistry // func TestRegistry(t *testing.T) { testRegistry(t) }
}

// A driver's package runs the benchmarks from benchmarks of its own, with the
// function that it gives RunDriverTests. go test -bench . then reports msgs/s,
// and p50-µs, p99-µs and max-µs at 5,000 messages per second.
func ExampleBenchmarkRelay() {
	var bus memsync.Bus
	newSync := func(_ testing.TB, channel string) edge.Sync {
		return memsync.New(memsync.Options{Bus: &bus, Channel: channel})
	}
	benchmarkRelay := func(b *testing.B) { drivertest.BenchmarkRelay(b, newSync) }
	benchmarkLatency := func(b *testing.B) { drivertest.BenchmarkLatency(b, newSync, 5000) }
	_ = benchmarkRelay   // func BenchmarkRelay(b *testing.B) { benchmarkRelay(b) }
	_ = benchmarkLatency // func BenchmarkLatency(b *testing.B) { benchmarkLatency(b) }
}
