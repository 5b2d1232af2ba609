package pgsync

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/edgesync/edgesync/edge"
)

// unwrap returns the driver d, a driver built by New.
func unwrap(d edge.Driver) *driver {
	if rd, ok := d.(routedDriver); ok {
		return rd.driver
	}
	return d.(*driver)
}

// OnListener runs fn on the listening connection of d, a routed driver built
// by New and subscribed, between two waits for notifications.
func OnListener(ctx context.Context, d edge.Driver, fn func(context.Context, *pgx.Conn) error) error {
	dr := unwrap(d)
	done := make(chan error, 1)
	call := func(ctx context.Context, conn *pgx.Conn) { done <- fn(ctx, conn) }
	select {
	case dr.routes.calls <- call:
	case <-ctx.Done():
		return fmt.Errorf("the listener took no call: %w", ctx.Err())
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("the listener ran no call: %w", ctx.Err())
	}
}

// ListeningChannels returns pg_listening_channels() of the listening
// connection of d, a routed driver built by New and subscribed.
func ListeningChannels(ctx context.Context, d edge.Driver) ([]string, error) {
	var names []string
	err := OnListener(ctx, d, func(ctx context.Context, conn *pgx.Conn) error {
		rows, err := conn.Query(ctx, "SELECT pg_listening_channels()")
		if err != nil {
			return err
		}
		names, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	})
	return names, err
}

// ListenerPID returns the backend pid of the listening connection of d, a
// routed driver built by New and subscribed.
func ListenerPID(ctx context.Context, d edge.Driver) (int, error) {
	var pid int
	err := OnListener(ctx, d, func(ctx context.Context, conn *pgx.Conn) error {
		return conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid)
	})
	return pid, err
}

// RouteChanges returns how many times d, a routed driver built by New, has
// run LISTEN or UNLISTEN statements on its bucket channels.
func RouteChanges(d edge.Driver) int64 { return unwrap(d).routeChanges.Load() }

// Cleanup runs the large payload cleanup of d, a driver built by New, now.
func Cleanup(ctx context.Context, d edge.Driver) (int64, error) {
	return unwrap(d).cleanup(ctx)
}

// OnCleanup makes d, a driver built by New, call hook after each cleanup its
// timer runs, with what the cleanup returned.
func OnCleanup(d edge.Driver, hook func(deleted int64, err error)) {
	dr := unwrap(d)
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
				d = unwrap(dr)
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
