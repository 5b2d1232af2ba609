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

// ForgetCleanup makes the next large publish of d clean up, as if the last
// cleanup were long ago.
func ForgetCleanup(d edge.Driver) {
	dr := d.(*driver)
	dr.tableMu.Lock()
	dr.lastCleanup = time.Time{}
	dr.tableMu.Unlock()
}

// SetPageSize sets how many ids Subscribers reads per query.
func SetPageSize(r *Registry, n int) { r.pageSize = n }

// Prune deletes expired connections now.
func Prune(ctx context.Context, r *Registry) (int64, error) { return r.prune(ctx) }

// SetProbeTiming sets how often the driver built by build checks its
// listening connection, and how long a ping or a probe may take. pings
// counts the pings on the listening connection.
func SetProbeTiming(build edge.Sync, interval, timeout time.Duration) (_ edge.Sync, pings func() int64) {
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
		}, func() int64 {
			mu.Lock()
			defer mu.Unlock()
			return d.pings.Load()
		}
}
