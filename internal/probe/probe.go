// Package probe is how an edgesync driver checks its subscription end to
// end: it publishes a probe to its own channel, through its publishing
// connections, and expects it back on the subscription within a bound.
//
// A probe is the JSON object {"edgesync":"probe","id":"<instance id>","n":<n>}.
// It is not an envelope (it has no "msg"), so a crossws instance drops it
// without a word, and every edgesync instance recognises it by its Marker and
// drops it without a report. The instance whose id it carries takes it as the
// answer to its probe n.
package probe

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Marker begins every probe; no envelope begins so.
const Marker = `{"edgesync":"probe",`

// Is reports whether payload is a probe, of any instance.
func Is(payload string) bool { return strings.HasPrefix(payload, Marker) }

// Prefix returns how the probes of the instance id begin, up to their number.
func Prefix(id string) string {
	quoted, _ := json.Marshal(id) // a string always marshals
	return Marker + `"id":` + string(quoted) + `,"n":`
}

// Append appends probe n of the instance whose Prefix is prefix to buf.
func Append(buf []byte, prefix string, n uint64) []byte {
	return append(strconv.AppendUint(append(buf, prefix...), n, 10), '}')
}

// Parse returns the number of payload when it is a probe of the instance
// whose Prefix is prefix.
func Parse(payload, prefix string) (n uint64, ok bool) {
	rest, ok := strings.CutPrefix(payload, prefix)
	if !ok {
		return 0, false
	}
	rest, ok = strings.CutSuffix(rest, "}")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(rest, 10, 64)
	return n, err == nil
}

// State is what the goroutine that publishes probes and the one that reads
// the subscription share: one probe at a time is on its way. The zero value
// is a subscription that is down. A State is safe for concurrent use.
type State struct {
	mu       sync.Mutex
	live     bool        // the subscription is up: probes are worth sending
	gen      uint64      // bumped at every loss: a probe sent before counts for nothing
	n        uint64      // the number of the last probe
	inflight bool        // probe n is being published
	back     uint64      // the number of the last probe that came back
	sent     time.Time   // when probe n was published, while it has not come back
	answered atomic.Bool // a probe came back, or a message was heard, since the last Up
}

// Up records that the subscription is in place: not yet that it works,
// which Answered tells once a probe has come back through it.
func (s *State) Up() {
	s.mu.Lock()
	s.live = true
	s.answered.Store(false)
	s.mu.Unlock()
}

// Answered reports whether, since the last Up, a probe has come back or a
// message of another instance has been heard: the subscription works end to
// end.
func (s *State) Answered() bool { return s.answered.Load() }

// Heard records that the subscription delivered a message of another
// instance, which shows that it works as a probe back would. It costs an
// atomic load once that is known.
func (s *State) Heard() {
	if s.answered.Load() {
		return
	}
	s.mu.Lock()
	if s.live {
		s.answered.Store(true)
	}
	s.mu.Unlock()
}

// Down records that the subscription is lost: the probe on its way is
// forgotten, and none is sent until Up.
func (s *State) Down() {
	s.mu.Lock()
	s.live = false
	s.gen++
	s.sent = time.Time{}
	s.mu.Unlock()
}

// Next returns the number of the probe to publish and the generation it is
// published in, or false when none is to be published now: the
// subscription is down, or the last probe has not come back.
func (s *State) Next() (n, gen uint64, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.live || s.inflight || !s.sent.IsZero() {
		return 0, 0, false
	}
	s.n++
	s.inflight = true
	return s.n, s.gen, true
}

// Published records the outcome of publishing probe n of generation gen:
// when it went out at at and the subscription has not changed since, it is
// expected back. A probe that could not be published proves nothing.
func (s *State) Published(n, gen uint64, at time.Time, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.inflight = false
	if ok && gen == s.gen && n == s.n && s.back < n {
		s.sent = at
	}
}

// Got records that probe n came back on the subscription. Only the last
// probe counts: an older one, or a number never sent (a stranger's forgery),
// changes nothing.
func (s *State) Got(n uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n == s.n && n > 0 {
		s.back = n
		s.sent = time.Time{}
		if s.live {
			s.answered.Store(true)
		}
	}
}

// Due returns when the probe on its way is overdue, if one is.
func (s *State) Due(timeout time.Duration) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sent.IsZero() {
		return time.Time{}, false
	}
	return s.sent.Add(timeout), true
}

// Overdue reports whether a probe published more than timeout before now
// has not come back.
func (s *State) Overdue(now time.Time, timeout time.Duration) bool {
	due, ok := s.Due(timeout)
	return ok && now.After(due)
}

// Run publishes the instance's probes until ctx is done: every interval,
// while the subscription is up and no probe is on its way, it publishes the
// next one with publish, which timeout bounds. prefix is the instance's
// Prefix. A publish that fails proves nothing, and is handed to failed
// unless failed is nil.
func (s *State) Run(ctx context.Context, prefix string, interval, timeout time.Duration,
	publish func(ctx context.Context, payload []byte) error, failed func(error)) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	buf := make([]byte, 0, len(prefix)+24)
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		n, gen, ok := s.Next()
		if !ok {
			continue
		}
		buf = Append(buf[:0], prefix, n)
		pctx, cancel := context.WithTimeout(ctx, timeout)
		err := publish(pctx, buf)
		cancel()
		s.Published(n, gen, time.Now(), err == nil)
		if err != nil && failed != nil {
			failed(err)
		}
	}
}
