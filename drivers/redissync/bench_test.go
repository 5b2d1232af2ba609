package redissync_test

import (
	"testing"

	"github.com/edgesync/edgesync/drivers/drivertest"
	"github.com/edgesync/edgesync/drivers/redissync"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/internal/testenv"
)

// BenchmarkRelay measures how many 100-byte messages per second one hub
// relays to another through Redis.
func BenchmarkRelay(b *testing.B) { drivertest.BenchmarkRelay(b, benchSync) }

// BenchmarkLatency measures the time from a publish on one hub to a delivery
// on another through Redis, at 5,000 messages per second.
func BenchmarkLatency(b *testing.B) { drivertest.BenchmarkLatency(b, benchSync, 5000) }

// benchSync gives each instance a client of its own, as two processes would
// have.
func benchSync(tb testing.TB, channel string) edge.Sync {
	return redissync.New(redissync.Options{Client: newClient(tb), Channel: channel})
}

// BenchmarkRoutedRelay is BenchmarkRelay in a routed cluster.
func BenchmarkRoutedRelay(b *testing.B) { drivertest.BenchmarkRelay(b, routedBenchSync) }

// BenchmarkRoutedLatency is BenchmarkLatency in a routed cluster.
func BenchmarkRoutedLatency(b *testing.B) { drivertest.BenchmarkLatency(b, routedBenchSync, 5000) }

// routedBenchSync is benchSync in a routed cluster. The benchmarks publish
// as soon as hub B's member has subscribed, before a route set up in the
// background could be in place, so each driver routes the benchmarks' topic
// from the start: its Subscribe returns once that topic's bucket is
// subscribed.
func routedBenchSync(tb testing.TB, channel string) edge.Sync {
	sync := redissync.New(redissync.Options{Client: newClient(tb), Channel: channel, Routed: true})
	return func(inst edge.Instance) (edge.Driver, error) {
		d, err := sync(inst)
		if err == nil {
			d.(edge.RoutedDriver).Route("bench", true) // drivertest's topic
		}
		return d, err
	}
}

// BenchmarkClusterRelay is BenchmarkRelay on a Redis Cluster of three
// masters with a replica each: sharded pub/sub, the channel on one shard.
func BenchmarkClusterRelay(b *testing.B) { drivertest.BenchmarkRelay(b, clusterBenchSync(false)) }

// BenchmarkClusterLatency is BenchmarkLatency on a Redis Cluster.
func BenchmarkClusterLatency(b *testing.B) {
	drivertest.BenchmarkLatency(b, clusterBenchSync(false), 5000)
}

// BenchmarkClusterRoutedRelay is BenchmarkRoutedRelay on a Redis Cluster.
func BenchmarkClusterRoutedRelay(b *testing.B) { drivertest.BenchmarkRelay(b, clusterBenchSync(true)) }

// BenchmarkClusterRoutedLatency is BenchmarkRoutedLatency on a Redis Cluster.
func BenchmarkClusterRoutedLatency(b *testing.B) {
	drivertest.BenchmarkLatency(b, clusterBenchSync(true), 5000)
}

// clusterBenchSync is benchSync, or routedBenchSync, on a Redis Cluster:
// each instance has a cluster client of its own.
func clusterBenchSync(routed bool) func(tb testing.TB, channel string) edge.Sync {
	return func(tb testing.TB, channel string) edge.Sync {
		sync := redissync.New(redissync.Options{Client: newClusterClient(tb, testenv.RedisCluster(tb), ""), Channel: channel, Routed: routed})
		if !routed {
			return sync
		}
		return func(inst edge.Instance) (edge.Driver, error) {
			d, err := sync(inst)
			if err == nil {
				d.(edge.RoutedDriver).Route("bench", true) // drivertest's topic
			}
			return d, err
		}
	}
}
