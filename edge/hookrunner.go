package edge

import (
	"log/slog"
	"net/http"
	"runtime/debug"
	"sync"
)

// HookRunner runs an application's Hooks for a front end, so that every front
// end runs them the same way:
//
//   - a panic in Upgrade refuses the connection with 500 Internal Server
//     Error and is logged, since there is no peer yet;
//   - a panic in Open or Message is recovered, reported to Hooks.Error as a
//     *PanicError, and closes its peer with StatusInternalError (1011);
//   - a panic in Close is reported the same way;
//   - errors go to Hooks.Error, or, when it is nil or panics, to an ErrorLog;
//   - the namespace of an accepted connection defaults to DefaultNamespace.
//
// A front end makes one HookRunner and calls it for every peer. Set its
// fields before the first call; a HookRunner is safe for concurrent use.
type HookRunner struct {
	// Hooks are the application.
	Hooks Hooks
	// Logger is where errors go that no Hooks.Error takes, through an
	// ErrorLog. nil means slog.Default().
	Logger *slog.Logger
	// Name prefixes the log lines, for example "longlived". "" means
	// "edge".
	Name string

	once sync.Once
	log  *ErrorLog
}

// DefaultNamespace is the namespace of a connection whose Upgrade sets none:
// the path of the URL the client connected to, "/" when it is empty. On API
// Gateway that path is "/" followed by the stage name.
func DefaultNamespace(r *http.Request) string {
	if r == nil || r.URL == nil || r.URL.Path == "" {
		return "/"
	}
	return r.URL.Path
}

// Upgrade runs Hooks.Upgrade for r. An accepted connection gets its namespace
// filled in with DefaultNamespace when Upgrade chose none. A refusal is
// returned as is; a panic becomes a *Reject with status 500.
func (hr *HookRunner) Upgrade(r *http.Request) (accept Accept, err error) {
	if hr.Hooks.Upgrade != nil {
		accept, err = hr.upgrade(r)
		if err != nil {
			return Accept{}, err
		}
	}
	if accept.Namespace == "" {
		accept.Namespace = DefaultNamespace(r)
	}
	return accept, nil
}

func (hr *HookRunner) upgrade(r *http.Request) (accept Accept, err error) {
	defer func() {
		if v := recover(); v != nil {
			pe := &PanicError{Value: v, Stack: debug.Stack()}
			hr.errorLog().Log(hr.name()+": Hooks.Upgrade panicked", pe, "stack", string(pe.Stack))
			err = &Reject{Status: http.StatusInternalServerError}
		}
	}()
	return hr.Hooks.Upgrade(r)
}

// Open runs Hooks.Open for p. It reports false when the hook panicked, in
// which case p has been closed with StatusInternalError.
func (hr *HookRunner) Open(p Peer) bool {
	if hr.Hooks.Open == nil {
		return true
	}
	return hr.Guard(p, func() { hr.Hooks.Open(p) })
}

// Message runs Hooks.Message for p and d. It reports false when the hook
// panicked, in which case p has been closed with StatusInternalError.
func (hr *HookRunner) Message(p Peer, d Data) bool {
	if hr.Hooks.Message == nil {
		return true
	}
	return hr.Guard(p, func() { hr.Hooks.Message(p, d) })
}

// Close runs Hooks.Close for p with the close status and reason.
func (hr *HookRunner) Close(p Peer, code int, reason string) {
	if hr.Hooks.Close == nil {
		return
	}
	hr.Guard(p, func() { hr.Hooks.Close(p, code, reason) })
}

// Guard runs fn, a call into the application on behalf of p. A panic is
// recovered, reported to Hooks.Error and closes p with StatusInternalError;
// Guard then reports false.
func (hr *HookRunner) Guard(p Peer, fn func()) (ok bool) {
	defer func() {
		if v := recover(); v != nil {
			hr.Error(p, &PanicError{Value: v, Stack: debug.Stack()})
			closePeer(p, StatusInternalError, "internal error")
			ok = false
		}
	}()
	fn()
	return true
}

// closePeer closes p, whose Close may itself be application code.
func closePeer(p Peer, code int, reason string) {
	defer func() { _ = recover() }()
	_ = p.Close(code, reason)
}

// Error hands err, something that went wrong for p, to Hooks.Error, or logs
// it when there is no Hooks.Error or it panics. A nil p is an error of the
// front end that no peer owns: it is logged.
func (hr *HookRunner) Error(p Peer, err error) {
	if p == nil {
		hr.errorLog().Log(hr.name()+": error", err)
		return
	}
	if hr.Hooks.Error != nil {
		defer func() {
			if v := recover(); v != nil {
				hr.logPeer(hr.name()+": Hooks.Error panicked", &PanicError{Value: v, Stack: debug.Stack()}, p)
				hr.logPeer(hr.name()+": peer error", err, p)
			}
		}()
		hr.Hooks.Error(p, err)
		return
	}
	hr.logPeer(hr.name()+": peer error", err, p)
}

func (hr *HookRunner) logPeer(msg string, err error, p Peer) {
	hr.errorLog().Log(msg, err, "peer", p.ID(), "namespace", p.Namespace())
}

// Flush logs the repeats of errors that the error log holds back. A front
// end calls it when it closes.
func (hr *HookRunner) Flush() { hr.errorLog().Flush() }

func (hr *HookRunner) errorLog() *ErrorLog {
	hr.once.Do(func() { hr.log = &ErrorLog{Logger: hr.Logger} })
	return hr.log
}

func (hr *HookRunner) name() string {
	if hr.Name == "" {
		return "edge"
	}
	return hr.Name
}
