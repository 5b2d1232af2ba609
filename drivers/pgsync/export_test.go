package pgsync

import (
	"context"
	"sync"
	"time"

	"github.com/edgesync/edgesync/edge"
)

// Cleanup runs the large payload cleanup of d, a driver built by New, now.
func Cleanup(ctx context.Context, d edge.Driver) (int64, error) {
	return d.(*driver).cleanup(ctx)
}

// OnCleanup makes d, a driver built by New, call hook after each cleanup its
// timer runs, with what the cleanup returned.
func OnCleanup(d edge.Driver, hook func(deleted int64, err error)) {
	dr := d.(*driver)
	dr.tableMu.Lock()
	dr.onCleanup = hook
	dr.tableMu.Unlock()
}

// ParseReference parses a large message reference.
func ParseReference(raw []byte) (id string, row int64, token string, err error) {
	ref, err := parseReference(raw)
	return ref.ID, ref.Ref, ref.Token, err
}

// SetPageSize sets how many ids Subscribers reads per query.
func SetPageSize(r *Registry, n int) { r.pageSize = n }

// Key returns the digest by which the Registry's rows find a name.
func Key(name string) []byte { return key(name) }

// Prune deletes expired connections now.
func Prune(ctx context.Context, r *Registry) (int64, error) { return r.prune(ctx) }

// SetProbeTiming sets how often the driver built by build checks its
// listening connection, and how long a ping or a probe may take. pings
// counts the pings on the listening connection.
func SetProbeTiming(build edge.Sync, interval, timeout time.Duration) (_ edge.Sync, pings func() int64) {
	sync, counts := SetProbeTimingCounted(build, interval, timeout)
	return sync, func() int64 { p, _ := counts(); return p }
}

// SetProbeTimingCounted is SetProbeTiming, counting the pings and the
// listening connections made.
func SetProbeTimingCounted(build edge.Sync, interval, timeout time.Duration) (_ edge.Sync, counts func() (pings, listens int64)) {
	var d *driver
	var mu sync.Mutex
	return func(inst edge.Instance) (edge.Driver, error) {
			dr, err := build(inst)
			if err == nil {
				mu.Lock()
				d = dr.(*driver)
				d.probePeriod, d.timeout = interval, timeout
				mu.Unlock()
			}
			return dr, err
		}, func() (int64, int64) {
			mu.Lock()
			defer mu.Unlock()
			return d.pings.Load(), d.listens.Load()
		}
}
