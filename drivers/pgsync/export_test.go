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

// SetQuietPeriod sets how long the driver built by build waits without
// notifications before it pings the server. pings counts those pings.
func SetQuietPeriod(build edge.Sync, period time.Duration) (_ edge.Sync, pings func() int64) {
	var d *driver
	var mu sync.Mutex
	return func(inst edge.Instance) (edge.Driver, error) {
			dr, err := build(inst)
			if err == nil {
				mu.Lock()
				d = dr.(*driver)
				d.quietPeriod = period
				mu.Unlock()
			}
			return dr, err
		}, func() int64 {
			mu.Lock()
			defer mu.Unlock()
			return d.pings.Load()
		}
}
