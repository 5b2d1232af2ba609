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
		drivertest.RunDriverTests(t, func(t *testing.T, channel string) edge.Sync {
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
		drivertest.RunRegistryTests(t, func(t *testing.T) edge.Registry { return reg })
	}
	_ = testRegistry // func TestRegistry(t *testing.T) { testRegistry(t) }
}
