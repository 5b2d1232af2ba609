package testenv

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgesync/edgesync/edge"
)

// AnyStage, given to ErrorLog's Errors, Count or Await, stands for every
// stage.
const AnyStage edge.Stage = ""

// ErrorLog records the errors that a Hub reports to Options.OnError, or a
// driver to Instance.Report, in the order they come, for tests to check and
// to wait on. It is safe for concurrent use.
type ErrorLog struct {
	mu      sync.Mutex
	reports []report
	signal  chan struct{} // signalled after every report
}

type report struct {
	err   error
	stage edge.Stage
}

// NewErrorLog returns an empty ErrorLog.
func NewErrorLog() *ErrorLog {
	return &ErrorLog{signal: make(chan struct{}, 1)}
}

// OnError is an edge.Options.OnError that records err.
func (l *ErrorLog) OnError(err error, info edge.ErrorInfo) { l.Report(err, info.Stage) }

// Report is an edge.Instance.Report that records err.
func (l *ErrorLog) Report(err error, stage edge.Stage) {
	l.mu.Lock()
	l.reports = append(l.reports, report{err, stage})
	l.mu.Unlock()
	select {
	case l.signal <- struct{}{}:
	default:
	}
}

// Errors returns the errors reported so far at stage, in order.
func (l *ErrorLog) Errors(stage edge.Stage) []error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var errs []error
	for _, r := range l.reports {
		if stage == AnyStage || r.stage == stage {
			errs = append(errs, r.err)
		}
	}
	return errs
}

// Count returns how many errors were reported at stage.
func (l *ErrorLog) Count(stage edge.Stage) int { return len(l.Errors(stage)) }

// CountIs returns how many errors were reported at stage that match target
// (errors.Is).
func (l *ErrorLog) CountIs(stage edge.Stage, target error) int {
	n := 0
	for _, err := range l.Errors(stage) {
		if errors.Is(err, target) {
			n++
		}
	}
	return n
}

// Await waits until more than n errors have been reported at stage, and
// returns the n+1st. It fails t after timeout.
func (l *ErrorLog) Await(t testing.TB, stage edge.Stage, n int, timeout time.Duration) error {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		if errs := l.Errors(stage); len(errs) > n {
			return errs[n]
		}
		select {
		case <-l.signal:
		case <-timer.C:
			t.Fatalf("timed out after %v waiting for error %d at stage %q; reported: [%v]", timeout, n+1, stage, l)
			return nil
		}
	}
}

// String lists every error reported so far, in order, as "stage: error"
// separated by "; ".
func (l *ErrorLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var sb strings.Builder
	for i, r := range l.reports {
		if i > 0 {
			sb.WriteString("; ")
		}
		fmt.Fprintf(&sb, "%s: %v", r.stage, r.err)
	}
	return sb.String()
}
