package emulator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-lambda-go/lambda"
)

// API Gateway's quotas for WebSocket APIs, which the Emulator enforces.
const (
	// MaxMessageSize is the largest message, in bytes, a client may send
	// and PostToConnection may deliver: 128 KB.
	MaxMessageSize = 128 * 1024
	// MaxFrameSize is the largest WebSocket frame, in bytes, a client may
	// send: 32 KB. Larger messages must be split into frames.
	MaxFrameSize = 32 * 1024
)

// ErrUnauthorized is the error an Options.Authorizer returns, or wraps, to
// answer a client 401 Unauthorized, as API Gateway answers a client its
// Lambda authorizer fails as unauthorized.
var ErrUnauthorized = errors.New("emulator: unauthorized")

// Defaults for the zero values of Options.
const (
	DefaultStage                    = "local"
	DefaultRouteSelectionExpression = "$request.body.action"
	DefaultIdleTimeout              = 10 * time.Minute
	DefaultMaxDuration              = 2 * time.Hour
	DefaultInvokeTimeout            = 29 * time.Second
	DefaultAPIID                    = "emulator"
	DefaultRegion                   = "us-east-1"
)

// Options configure an Emulator.
type Options struct {
	// Stage is the API's stage: clients connect at ws://HOST/{Stage} and
	// the management API is at http://HOST/{Stage}/@connections. "" means
	// DefaultStage.
	Stage string

	// Handler is the Lambda function every route is integrated with, through
	// Lambda's JSON path: the event is marshalled to JSON, passed to Invoke,
	// and the answer is unmarshalled as an events.APIGatewayProxyResponse.
	// In process, use lambda.NewHandler(fn); a *Runtime runs a real
	// function binary. Required.
	Handler lambda.Handler

	// RouteSelectionExpression selects a message's route key:
	// "$request.body.X", where X is a dotted path into the JSON body.
	// "" means DefaultRouteSelectionExpression.
	RouteSelectionExpression string

	// Routes lists the API's custom route keys. A message whose selected
	// value is not one of them goes to $default.
	Routes []string

	// RouteResponses lists the route keys that have a route response, the
	// two-way routes: a non-empty body their integration answers is sent
	// back to the client. $default may be listed, and so may any of Routes.
	// On any other route the response body is dropped, as API Gateway
	// drops it on a route without a route response. nil makes every route
	// one-way.
	RouteResponses []string

	// Authorizer, when not nil, is the $connect route's Lambda REQUEST
	// authorizer, run in process on the client's upgrade request before
	// $connect is invoked, bounded by InvokeTimeout (the request's context
	// is done then). An error refuses the connection without invoking
	// $connect, as API Gateway does: ErrUnauthorized (or an error wrapping
	// it) is answered 401 Unauthorized, as when the authorizer fails the
	// request as unauthorized, any other error 403 Forbidden, as when its
	// policy denies the request. Otherwise the context it returns becomes
	// requestContext.authorizer in every event of the connection, $connect,
	// messages and $disconnect; put the principal's id under "principalId"
	// as API Gateway does. Its values must be strings, numbers or booleans,
	// as in an authorizer's context on AWS: anything else, a panic or a
	// timeout is answered 500.
	Authorizer func(r *http.Request) (context map[string]any, err error)

	// IdleTimeout closes a connection that has carried no message for that
	// long. 0 means DefaultIdleTimeout.
	IdleTimeout time.Duration

	// MaxDuration closes a connection that long after it was accepted.
	// 0 means DefaultMaxDuration.
	MaxDuration time.Duration

	// InvokeTimeout bounds every invocation of Handler (API Gateway's
	// integration timeout). 0 means DefaultInvokeTimeout.
	InvokeTimeout time.Duration

	// APIID is the apiId in events. "" means DefaultAPIID.
	APIID string

	// Region is the API's region, reported in the function ARN the
	// in-process Handler sees in its lambdacontext. "" means DefaultRegion.
	Region string

	// Logger receives the emulator's log lines (integration errors,
	// connections opened and closed). nil discards them.
	Logger *slog.Logger
}

// Emulator is a local API Gateway WebSocket API: an http.Handler serving the
// WebSocket endpoint, the @connections management API and the emulator's own
// endpoints. See the package documentation for the behaviour.
type Emulator struct {
	opts      Options
	routePath []string // the dotted path of $request.body.X
	log       *slog.Logger

	mu       sync.Mutex
	closed   bool
	conns    map[string]*conn
	throttle int

	wg sync.WaitGroup // connections, invocations and close handshakes

	// running counts the calls of the Handler that have not returned, which
	// may outlive their invocation's timeout; drained, when not nil, is
	// closed once running is 0.
	running int
	drained chan struct{}

	// serial, when not nil, makes invocations of a Handler that is not safe
	// for concurrent use run one at a time.
	serial *sync.Mutex
}

// New returns an Emulator configured by opts.
func New(opts Options) (*Emulator, error) {
	if opts.Handler == nil {
		return nil, errors.New("emulator: Options.Handler is required")
	}
	if opts.Stage == "" {
		opts.Stage = DefaultStage
	}
	if strings.ContainsAny(opts.Stage, "/?#%") || opts.Stage == "_emulator" || opts.Stage == "@connections" {
		return nil, fmt.Errorf("emulator: invalid stage %q", opts.Stage)
	}
	if opts.RouteSelectionExpression == "" {
		opts.RouteSelectionExpression = DefaultRouteSelectionExpression
	}
	path, ok := strings.CutPrefix(opts.RouteSelectionExpression, "$request.body.")
	if !ok || path == "" || slices.Contains(strings.Split(path, "."), "") {
		return nil, fmt.Errorf("emulator: unsupported route selection expression %q: want $request.body.X", opts.RouteSelectionExpression)
	}
	for _, r := range opts.Routes {
		if r == "" || r == routeConnect || r == routeDisconnect || r == routeDefault {
			return nil, fmt.Errorf("emulator: invalid custom route key %q", r)
		}
	}
	opts.Routes = slices.Clone(opts.Routes)
	for _, r := range opts.RouteResponses {
		if r != routeDefault && !slices.Contains(opts.Routes, r) {
			return nil, fmt.Errorf("emulator: route response for %q, which is neither $default nor one of Options.Routes", r)
		}
	}
	opts.RouteResponses = slices.Clone(opts.RouteResponses)
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = DefaultIdleTimeout
	}
	if opts.MaxDuration <= 0 {
		opts.MaxDuration = DefaultMaxDuration
	}
	if opts.InvokeTimeout <= 0 {
		opts.InvokeTimeout = DefaultInvokeTimeout
	}
	if opts.APIID == "" {
		opts.APIID = DefaultAPIID
	}
	if opts.Region == "" {
		opts.Region = DefaultRegion
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	e := &Emulator{
		opts:      opts,
		routePath: strings.Split(path, "."),
		log:       log,
		conns:     make(map[string]*conn),
	}
	if !concurrencySafe(opts.Handler) {
		e.serial = new(sync.Mutex)
	}
	return e, nil
}

// ServeHTTP serves the WebSocket endpoint GET /{stage}, the management API
// POST|GET|DELETE /{stage}/@connections/{id} and the emulator's own
// GET /_emulator/connections. Anything else is answered 404 Not Found, except
// other paths under /{stage} and management calls for another stage, which
// API Gateway answers 403 ForbiddenException.
func (e *Emulator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	segs := strings.Split(strings.TrimPrefix(r.URL.EscapedPath(), "/"), "/")
	first, err := url.PathUnescape(segs[0])
	if err != nil {
		http.NotFound(w, r)
		return
	}
	if first == "_emulator" {
		e.serveOwn(w, r, segs[1:])
		return
	}
	if len(segs) >= 2 {
		if second, err := url.PathUnescape(segs[1]); err == nil && second == "@connections" {
			e.serveManagement(w, r, first, segs[2:])
			return
		}
	}
	if first != e.opts.Stage {
		http.NotFound(w, r)
		return
	}
	if len(segs) == 1 {
		e.serveConnect(w, r)
		return
	}
	writeForbidden(w)
}

// serveOwn serves the emulator's own endpoints under /_emulator.
func (e *Emulator) serveOwn(w http.ResponseWriter, r *http.Request, segs []string) {
	if len(segs) != 1 || segs[0] != "connections" {
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	ids := e.Connections()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(ids)
}

// Connections returns the ids of the live connections (those whose $connect
// succeeded and which have not closed), oldest first.
func (e *Emulator) Connections() []string {
	e.mu.Lock()
	cs := make([]*conn, 0, len(e.conns))
	for _, c := range e.conns {
		cs = append(cs, c)
	}
	e.mu.Unlock()
	slices.SortFunc(cs, func(a, b *conn) int {
		if c := a.connectedAt.Compare(b.connectedAt); c != 0 {
			return c
		}
		return strings.Compare(a.id, b.id)
	})
	ids := make([]string, len(cs))
	for i, c := range cs {
		ids[i] = c.id
	}
	return ids
}

// Throttle makes the next n management API calls answer 429
// LimitExceededException, as API Gateway does when the account's request
// rate is exceeded, so that a client's retries can be tested. Throttle(0)
// cancels any throttling left.
func (e *Emulator) Throttle(n int) {
	e.mu.Lock()
	e.throttle = max(n, 0)
	e.mu.Unlock()
}

// throttled reports whether this management call is to be throttled.
func (e *Emulator) throttled() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.throttle > 0 {
		e.throttle--
		return true
	}
	return false
}

// closeGrace is how long Close waits for a call of the Handler that has
// overrun its InvokeTimeout before abandoning it.
const closeGrace = time.Second

// Close refuses new connections, closes every connection with 1001 Going
// Away (invoking $disconnect for each) and waits until every invocation has
// returned. It is safe to call more than once.
//
// Every wait is bounded: an invocation by Options.InvokeTimeout, a close
// handshake by a few seconds. A call of the Handler that ignores its
// context and is still running closeGrace (one second) after its timeout
// is abandoned: Close returns an error saying how many calls it abandoned,
// and they go on running in their goroutines. A Runtime's invocations never
// outlive their context.
func (e *Emulator) Close() error {
	e.mu.Lock()
	if !e.closed {
		e.closed = true
		cs := make([]*conn, 0, len(e.conns))
		for _, c := range e.conns {
			cs = append(cs, c)
		}
		e.mu.Unlock()
		for _, c := range cs {
			c.shutdown(closeGoingAway, reasonGoingAway)
		}
	} else {
		e.mu.Unlock()
	}
	e.wg.Wait() // every invocation has returned or timed out
	return e.awaitHandlers()
}

// awaitHandlers waits, for at most closeGrace, until every call of the
// Handler has returned.
func (e *Emulator) awaitHandlers() error {
	e.mu.Lock()
	if e.running == 0 {
		e.mu.Unlock()
		return nil
	}
	if e.drained == nil {
		e.drained = make(chan struct{})
	}
	drained := e.drained
	e.mu.Unlock()
	t := time.NewTimer(closeGrace)
	defer t.Stop()
	select {
	case <-drained:
		return nil
	case <-t.C:
	}
	e.mu.Lock()
	n := e.running
	e.mu.Unlock()
	if n == 0 {
		return nil
	}
	return fmt.Errorf("emulator: closed, abandoning %d invocation(s) of the Handler still running %v after their InvokeTimeout (%v)",
		n, closeGrace, e.opts.InvokeTimeout)
}

// handlerReturned records that a call of the Handler has returned.
func (e *Emulator) handlerReturned() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.running--
	if e.running == 0 && e.drained != nil {
		close(e.drained)
		e.drained = nil
	}
}

// begin registers work that Close must wait for; false means the Emulator is
// closed.
func (e *Emulator) begin() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return false
	}
	e.wg.Add(1)
	return true
}

// lookup returns the open connection id, or nil.
func (e *Emulator) lookup(id string) *conn {
	e.mu.Lock()
	c := e.conns[id]
	e.mu.Unlock()
	if c == nil {
		return nil
	}
	<-c.ready // the handshake's last steps, after its 101 was written
	if c.ws == nil || c.byServer.Load() {
		return nil
	}
	return c
}

// invoke runs one invocation of the Handler with event, bounded by
// InvokeTimeout. It returns an error for a failed invocation or an answer
// that is not a JSON object (or null).
func (e *Emulator) invoke(event any) (events.APIGatewayProxyResponse, error) {
	var resp events.APIGatewayProxyResponse
	payload, err := json.Marshal(event)
	if err != nil {
		return resp, fmt.Errorf("marshal event: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), e.opts.InvokeTimeout)
	defer cancel()
	ctx = withLambdaContext(ctx, e.functionARN())

	type result struct {
		out []byte
		err error
	}
	done := make(chan result, 1)
	e.mu.Lock()
	e.running++ // Close waits for the call, within bounds
	e.mu.Unlock()
	go func() {
		defer e.handlerReturned()
		var res result
		func() {
			defer func() {
				if p := recover(); p != nil {
					res.err = fmt.Errorf("handler panicked: %v", p)
				}
			}()
			if e.serial != nil {
				e.serial.Lock()
				defer e.serial.Unlock()
				if err := ctx.Err(); err != nil {
					res.err = err // timed out waiting for the previous invocation
					return
				}
			}
			res.out, res.err = e.opts.Handler.Invoke(ctx, payload)
			res.out = bytes.Clone(res.out)
		}()
		done <- res
	}()
	var res result
	select {
	case res = <-done:
	case <-ctx.Done():
		return resp, fmt.Errorf("integration timed out after %v", e.opts.InvokeTimeout)
	}
	if res.err != nil {
		return resp, fmt.Errorf("invoke: %w", res.err)
	}
	if err := json.Unmarshal(res.out, &resp); err != nil {
		return resp, fmt.Errorf("malformed integration response: %w", err)
	}
	return resp, nil
}

// functionARN is the ARN the in-process handler is told it was invoked as.
func (e *Emulator) functionARN() string {
	return "arn:aws:lambda:" + e.opts.Region + ":123456789012:function:" + e.opts.APIID
}
