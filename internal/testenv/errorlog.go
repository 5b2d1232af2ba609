package testenv

import (
	"sync"
	"testing"
	"time"

	"github.com/edgesync/edgesync/edge"
)

// ErrorLog records what a Hub reports to Options.OnError, for tests to wait on.
type ErrorLog struct {
	mu     sync.Mutex
	stages map[edge.Stage][]error
	signal chan struct{}
}

// NewErrorLog returns an empty ErrorLog.
func NewErrorLog() *ErrorLog {
	return &ErrorLog{stages: make(map[edge.Stage][]error), signal: make(chan struct{}, 1)}
}

// OnError is the edge.Options.OnError that fills the log.
func (l *ErrorLog) OnError(err error, info edge.ErrorInfo) {
	l.mu.Lock()
	l.stages[info.Stage] = append(l.stages[info.Stage], err)
	l.mu.Unlock()
	select {
	case l.signal <- struct{}{}:
	default:
	}
}

// Count returns how many errors were reported at stage.
func (l *ErrorLog) Count(stage edge.Stage) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.stages[stage])
}

// Await waits until more than n errors have been reported at stage, and
// returns the n+1st. It fails t after timeout.
func (l *ErrorLog) Await(t testing.TB, stage edge.Stage, n int, timeout time.Duration) error {
	t.Helper()
	deadline := time.After(timeout)
	for {
		l.mu.Lock()
		errs := l.stages[stage]
		l.mu.Unlock()
		if len(errs) > n {
			return errs[n]
		}
		select {
		case <-l.signal:
		case <-deadline:
			t.Fatalf("no error reported at stage %s within %v", stage, timeout)
			return nil
		}
	}
}
