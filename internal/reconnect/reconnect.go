// Package reconnect is the one reconnect rule every edgesync driver follows
// when it loses its backplane connection:
//
//   - A loss is reported once, at edge.StageSubscribe, when it is detected:
//     the attempts that fail during the same outage are not reported again.
//   - Recovery is not an error and is not reported; the next loss is
//     reported again.
//   - Attempts back off exponentially from Min to Max, each wait drawn at
//     random between half and all of the current step (jitter), so that the
//     instances that lost the same server do not all return at once. A
//     successful connection resets the backoff.
//
// Drivers document the rule by reference to edge.Driver.
package reconnect

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/edgesync/edgesync/edge"
)

// Backoff is the wait between reconnection attempts. The zero value waits
// between DefaultMin and DefaultMax. A Backoff is not safe for concurrent use.
type Backoff struct {
	Min, Max time.Duration // bounds of the step; 0 means DefaultMin, DefaultMax
	step     time.Duration
}

// Defaults for the zero value of Backoff.
const (
	DefaultMin = 10 * time.Millisecond
	DefaultMax = time.Second
)

// Next returns the wait before the next attempt and doubles the step, up to
// Max.
func (b *Backoff) Next() time.Duration {
	lo, hi := b.Min, b.Max
	if lo <= 0 {
		lo = DefaultMin
	}
	if hi <= 0 {
		hi = DefaultMax
	}
	if hi < lo {
		hi = lo
	}
	if b.step < lo {
		b.step = lo
	}
	d := b.step/2 + rand.N(b.step/2+1)
	b.step = min(2*b.step, hi)
	return d
}

// Reset starts the backoff again from Min, after a successful connection.
func (b *Backoff) Reset() { b.step = 0 }

// Wait sleeps for Next, or until ctx is done. It reports whether the wait
// ran out (false: ctx is done).
func (b *Backoff) Wait(ctx context.Context) bool {
	t := time.NewTimer(b.Next())
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Outage reports the losses of one connection by the rule: once per outage.
// It is safe for concurrent use.
type Outage struct {
	report func(error, edge.Stage)

	mu   sync.Mutex
	down bool
}

// NewOutage returns an Outage that reports through report, normally the
// driver's edge.Instance.Report.
func NewOutage(report func(error, edge.Stage)) *Outage {
	return &Outage{report: report}
}

// Lost records that the connection is down because of err. The first loss
// of an outage is reported at edge.StageSubscribe; later ones are not. It
// reports whether err was reported.
func (o *Outage) Lost(err error) bool {
	o.mu.Lock()
	first := !o.down
	o.down = true
	o.mu.Unlock()
	if first && o.report != nil {
		o.report(err, edge.StageSubscribe)
	}
	return first
}

// Restored records that the connection is back: the next loss starts a new
// outage and is reported.
func (o *Outage) Restored() {
	o.mu.Lock()
	o.down = false
	o.mu.Unlock()
}

// Down reports whether an outage is in progress.
func (o *Outage) Down() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.down
}
