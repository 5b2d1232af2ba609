package edge

import (
	"log/slog"
	"sync"
	"time"
)

// DefaultErrorLogInterval is how often an ErrorLog with a zero Interval logs
// one kind of error.
const DefaultErrorLogInterval = 10 * time.Second

// maxErrorKinds bounds the kinds of error an ErrorLog tells apart; the kinds
// beyond it share one entry, so that errors with ever-changing text cannot
// grow it without bound.
const maxErrorKinds = 256

// ErrorLog logs errors with log/slog without letting a flood of them flood
// the log: the first error of a kind is logged at once, the repeats that
// follow within Interval are counted, and when the interval ends one line
// reports how many there were and the last of them. A kind is the message
// with its stage and the innermost error of the chain (errors.Unwrap), which
// is normally a sentinel such as ErrQueueFull, so errors that differ only in
// their details count as one kind.
//
// A Hub whose Options.OnError is nil reports to an ErrorLog of its own. The
// zero value is ready to use; an ErrorLog is safe for concurrent use. Exact
// counts of reported errors are in Hub.Stats.
type ErrorLog struct {
	// Logger receives the lines. nil means slog.Default().
	Logger *slog.Logger
	// Interval is the shortest time between two lines for one kind of
	// error. 0 means DefaultErrorLogInterval.
	Interval time.Duration

	mu    sync.Mutex
	kinds map[errorKey]*errorKind
}

type errorKey struct {
	msg, stage, kind string
}

// errorKind is the state of one kind of error: when its current interval
// ends, and what it held back during it.
type errorKind struct {
	until   time.Time
	held    int
	last    error
	args    []any
	pending *time.Timer // logs what was held back when the interval ends
}

// Report logs an error that a Hub reported at info.Stage; its signature is
// that of Options.OnError.
func (l *ErrorLog) Report(err error, info ErrorInfo) {
	l.log("edgesync backplane error", string(info.Stage), err, "stage", string(info.Stage))
}

// Log logs err under msg, with args as in slog.Logger.Error (front ends use
// it for errors of one peer, with its id).
func (l *ErrorLog) Log(msg string, err error, args ...any) {
	l.log(msg, "", err, args...)
}

func (l *ErrorLog) log(msg, stage string, err error, args ...any) {
	key := errorKey{msg: msg, stage: stage, kind: innermost(err)}
	now := time.Now()
	l.mu.Lock()
	if l.kinds == nil {
		l.kinds = make(map[errorKey]*errorKind)
	}
	k := l.kinds[key]
	if k == nil {
		if len(l.kinds) >= maxErrorKinds {
			l.forgetQuietLocked(now)
		}
		if len(l.kinds) >= maxErrorKinds {
			key = errorKey{msg: msg, stage: stage, kind: "other"}
			k = l.kinds[key]
		}
		if k == nil {
			k = &errorKind{}
			l.kinds[key] = k
		}
	}
	if !now.Before(k.until) {
		k.until = now.Add(l.interval())
		l.mu.Unlock()
		l.logger().Error(msg, append(args, "err", err)...)
		return
	}
	k.held++
	k.last, k.args = err, args
	if k.pending == nil {
		k.pending = time.AfterFunc(k.until.Sub(now), func() { l.release(key) })
	}
	l.mu.Unlock()
}

// release logs what one kind held back during its interval, which starts a
// new interval.
func (l *ErrorLog) release(key errorKey) {
	l.mu.Lock()
	k := l.kinds[key]
	if k == nil || k.held == 0 {
		l.mu.Unlock()
		return
	}
	held, err, args := k.held, k.last, k.args
	k.held, k.last, k.args, k.pending = 0, nil, nil, nil
	k.until = time.Now().Add(l.interval())
	l.mu.Unlock()
	// release may run on a timer's goroutine, where a panicking
	// slog.Handler would end the process.
	defer func() { _ = recover() }()
	l.logger().Error(key.msg, append(args, "err", err, "repeated", held, "within", l.interval().String())...)
}

// Flush logs at once what every kind holds back, as its interval would when
// it ends. A Hub flushes its own ErrorLog when it closes.
func (l *ErrorLog) Flush() {
	l.mu.Lock()
	var keys []errorKey
	for key, k := range l.kinds {
		if k.held > 0 {
			if k.pending != nil {
				k.pending.Stop()
			}
			keys = append(keys, key)
		}
	}
	l.mu.Unlock()
	for _, key := range keys {
		l.release(key)
	}
}

// forgetQuietLocked forgets the kinds whose interval has ended with nothing
// held back.
func (l *ErrorLog) forgetQuietLocked(now time.Time) {
	for key, k := range l.kinds {
		if k.held == 0 && !now.Before(k.until) {
			delete(l.kinds, key)
		}
	}
}

func (l *ErrorLog) interval() time.Duration {
	if l.Interval <= 0 {
		return DefaultErrorLogInterval
	}
	return l.Interval
}

func (l *ErrorLog) logger() *slog.Logger {
	if l.Logger == nil {
		return slog.Default()
	}
	return l.Logger
}

// innermost returns the text of the innermost error of err's chain, following
// the first error of a join.
func innermost(err error) string {
	for err != nil {
		var next error
		switch u := err.(type) {
		case interface{ Unwrap() error }:
			next = u.Unwrap()
		case interface{ Unwrap() []error }:
			if errs := u.Unwrap(); len(errs) > 0 {
				next = errs[0]
			}
		}
		if next == nil {
			return err.Error()
		}
		err = next
	}
	return ""
}
