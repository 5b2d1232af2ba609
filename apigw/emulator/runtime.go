package emulator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ErrClosed is returned by Runtime.Invoke once the Runtime is closed.
var ErrClosed = errors.New("emulator: runtime closed")

// Defaults for the zero values of RuntimeOptions.
const (
	DefaultFunctionName = "emulator-function"
	DefaultMemorySize   = 128
	DefaultTimeout      = 30 * time.Second
)

// Lambda's limit on a synchronous invocation's response.
const maxResponseSize = 6 * 1024 * 1024

// RuntimeOptions configure a Runtime.
type RuntimeOptions struct {
	// Command is the function's executable and its arguments, e.g. a
	// bootstrap binary built for the provided.al2023 runtime. Required.
	Command []string

	// Procs is how many copies of Command run, each serving one invocation
	// at a time, as Lambda runs one invocation per execution environment.
	// 0 means 1.
	Procs int

	// Env is added to the function's environment after the Lambda
	// variables, so it may override them.
	Env []string

	// Stdout and Stderr receive the function's output; nil discards it.
	Stdout, Stderr io.Writer

	// FunctionName is AWS_LAMBDA_FUNCTION_NAME and names the function's
	// ARN. "" means DefaultFunctionName.
	FunctionName string

	// Region is AWS_REGION and AWS_DEFAULT_REGION. "" means DefaultRegion.
	Region string

	// MemorySize is AWS_LAMBDA_FUNCTION_MEMORY_SIZE, in MB; it is not
	// enforced. 0 means DefaultMemorySize.
	MemorySize int

	// Timeout is the function's timeout: an invocation's deadline is the
	// earlier of its context's and Timeout from its start. An invocation
	// that overruns it has its process killed and restarted, as Lambda
	// does. 0 means DefaultTimeout.
	Timeout time.Duration

	// Logger receives the Runtime's log lines: processes started, ready
	// (with their cold start time), exited and restarted. nil discards them.
	Logger *slog.Logger
}

// FunctionError is the error Runtime.Invoke returns when the function
// reported one, through /invocation/{id}/error or /init/error.
type FunctionError struct {
	Type    string // errorType
	Message string // errorMessage
}

// Error implements error.
func (e *FunctionError) Error() string {
	if e.Type == "" {
		return "function error: " + e.Message
	}
	return "function error: " + e.Type + ": " + e.Message
}

// Runtime runs a Lambda function's executable locally and serves it the
// Lambda Runtime API. It is a lambda.Handler, so it can be an Emulator's
// Handler.
type Runtime struct {
	opts    RuntimeOptions
	command []string
	env     []string
	arn     string
	log     *slog.Logger

	ctx    context.Context // done once Close is called
	cancel context.CancelFunc
	jobs   chan *invocation // an idle process's /next takes the next one
	procs  []*proc
	wg     sync.WaitGroup // the Runtime API servers
	procWG sync.WaitGroup // the processes' run loops

	mu         sync.Mutex
	coldStarts []time.Duration
}

// invocation is one Invoke in flight.
type invocation struct {
	id       string
	payload  []byte
	deadline time.Time
	done     chan invokeResult // buffered: the first result wins
}

type invokeResult struct {
	out []byte
	err error
}

func (inv *invocation) finish(out []byte, err error) {
	select {
	case inv.done <- invokeResult{out, err}:
	default:
	}
}

// proc is one copy of the function: its own Runtime API listener, so that
// a call to it is known to come from this process, and its current process.
type proc struct {
	rt  *Runtime
	n   int
	ln  net.Listener
	srv *http.Server

	mu      sync.Mutex
	cmd     *exec.Cmd
	running bool // the process is started and has not exited
	ready   bool // it has called /next since it started
	started time.Time
	current *invocation
	initErr error

	first     chan struct{} // closed once the first process is ready or has exited
	firstOnce sync.Once
}

// firstDone closes p.first.
func (p *proc) firstDone() { p.firstOnce.Do(func() { close(p.first) }) }

// NewRuntime starts opts.Procs copies of opts.Command under a local Lambda
// Runtime API and waits, bounded by ctx, until each has asked for its first
// invocation or has failed to start. A copy that fails is restarted, with
// backoff, until Close. ctx does not bound the Runtime's life.
func NewRuntime(ctx context.Context, opts RuntimeOptions) (*Runtime, error) {
	if len(opts.Command) == 0 || opts.Command[0] == "" {
		return nil, errors.New("emulator: RuntimeOptions.Command is required")
	}
	if opts.Procs <= 0 {
		opts.Procs = 1
	}
	if opts.FunctionName == "" {
		opts.FunctionName = DefaultFunctionName
	}
	if opts.Region == "" {
		opts.Region = DefaultRegion
	}
	if opts.MemorySize <= 0 {
		opts.MemorySize = DefaultMemorySize
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	command := append([]string(nil), opts.Command...)
	if strings.ContainsRune(command[0], filepath.Separator) {
		if abs, err := filepath.Abs(command[0]); err == nil {
			command[0] = abs
		}
	} else if path, err := exec.LookPath(command[0]); err == nil {
		command[0] = path
	}
	if _, err := exec.LookPath(command[0]); err != nil {
		return nil, fmt.Errorf("emulator: function command: %w", err)
	}

	rctx, cancel := context.WithCancel(context.Background())
	r := &Runtime{
		opts:    opts,
		command: command,
		arn:     "arn:aws:lambda:" + opts.Region + ":123456789012:function:" + opts.FunctionName,
		log:     log,
		ctx:     rctx,
		cancel:  cancel,
		jobs:    make(chan *invocation),
	}
	r.env = r.environment()
	for i := range opts.Procs {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			r.Close()
			return nil, fmt.Errorf("emulator: runtime API listener: %w", err)
		}
		p := &proc{rt: r, n: i, ln: ln, first: make(chan struct{})}
		p.srv = &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second}
		r.procs = append(r.procs, p)
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			_ = p.srv.Serve(ln)
		}()
		r.procWG.Add(1)
		go func() {
			defer r.procWG.Done()
			p.run()
		}()
	}
	for _, p := range r.procs {
		select {
		case <-p.first:
		case <-ctx.Done():
			r.Close()
			return nil, fmt.Errorf("emulator: waiting for the function to start: %w", ctx.Err())
		}
	}
	return r, nil
}

// environment returns the Lambda-like environment of the function's
// processes, without AWS_LAMBDA_RUNTIME_API.
func (r *Runtime) environment() []string {
	o := r.opts
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"LANG=en_US.UTF-8",
		"TZ=:UTC",
		"AWS_REGION=" + o.Region,
		"AWS_DEFAULT_REGION=" + o.Region,
		"AWS_ACCESS_KEY_ID=AKIAEMULATOREXAMPLE",
		"AWS_SECRET_ACCESS_KEY=emulator/secret/access/key/example",
		"AWS_SESSION_TOKEN=emulator-session-token",
		"AWS_LAMBDA_FUNCTION_NAME=" + o.FunctionName,
		"AWS_LAMBDA_FUNCTION_MEMORY_SIZE=" + strconv.Itoa(o.MemorySize),
		"AWS_LAMBDA_FUNCTION_VERSION=$LATEST",
		"AWS_LAMBDA_INITIALIZATION_TYPE=on-demand",
		"AWS_LAMBDA_LOG_GROUP_NAME=/aws/lambda/" + o.FunctionName,
		"AWS_LAMBDA_LOG_STREAM_NAME=emulator",
		"_HANDLER=" + filepath.Base(r.command[0]),
		"LAMBDA_TASK_ROOT=" + filepath.Dir(r.command[0]),
		"LAMBDA_RUNTIME_DIR=" + filepath.Dir(r.command[0]),
	}
	return append(env, o.Env...)
}

// ColdStarts returns, for every process started so far that reached its
// first /next, the time from its start to that call: the function's cold
// start, for benchmarks. Each is also logged.
func (r *Runtime) ColdStarts() []time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]time.Duration(nil), r.coldStarts...)
}

// Invoke runs one invocation of the function with payload, on the first
// process that is idle, waiting for one as long as ctx allows. It returns
// the function's response, a *FunctionError if the function reported an
// error, or an error if its process crashed or failed to start; the error
// of a process that exited wraps the *exec.ExitError of its exit (see
// errors.As), unless it exited with status 0.
func (r *Runtime) Invoke(ctx context.Context, payload []byte) ([]byte, error) {
	deadline := time.Now().Add(r.opts.Timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	inv := &invocation{id: newUUID(), payload: payload, deadline: deadline, done: make(chan invokeResult, 1)}

	select {
	case r.jobs <- inv:
	case <-ctx.Done():
		return nil, fmt.Errorf("emulator: no idle function process: %w", ctx.Err())
	case <-r.ctx.Done():
		return nil, ErrClosed
	}
	select {
	case res := <-inv.done:
		return res.out, res.err
	case <-ctx.Done():
		r.abandon(inv)
		return nil, fmt.Errorf("emulator: invocation %s: %w", inv.id, ctx.Err())
	case <-r.ctx.Done():
		return nil, ErrClosed
	}
}

// abandon kills the process running inv, which overran its deadline.
func (r *Runtime) abandon(inv *invocation) {
	for _, p := range r.procs {
		p.mu.Lock()
		if p.current == inv && p.cmd != nil && p.cmd.Process != nil {
			r.log.Warn("emulator: function timed out, killing its process", "proc", p.n, "request", inv.id)
			_ = p.cmd.Process.Kill()
		}
		p.mu.Unlock()
	}
}

// Close stops the processes (SIGTERM, then SIGKILL after two seconds) and
// the Runtime API; invocations in flight fail with ErrClosed.
func (r *Runtime) Close() error {
	r.cancel()
	r.procWG.Wait()
	for _, p := range r.procs {
		_ = p.srv.Close()
	}
	r.wg.Wait()
	return nil
}

const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 5 * time.Second
	stopGrace  = 2 * time.Second
)

// run starts the process, and restarts it when it exits, until Close.
func (p *proc) run() {
	r := p.rt
	backoff := minBackoff
	defer p.firstDone()
	for r.ctx.Err() == nil {
		cmd := exec.Command(r.command[0], r.command[1:]...)
		cmd.Env = append(append([]string(nil), r.env...), "AWS_LAMBDA_RUNTIME_API="+p.ln.Addr().String())
		cmd.Stdout, cmd.Stderr = r.opts.Stdout, r.opts.Stderr
		cmd.WaitDelay = stopGrace
		p.mu.Lock()
		p.cmd, p.running, p.ready, p.initErr, p.started = cmd, true, false, nil, time.Now()
		err := cmd.Start()
		if err != nil {
			p.running = false
		}
		p.mu.Unlock()
		if err != nil {
			r.log.Error("emulator: function process did not start", "proc", p.n, "err", err)
			p.failWaiting(fmt.Errorf("emulator: function process did not start: %w", err))
			p.firstDone()
		} else {
			r.log.Info("emulator: function process started", "proc", p.n, "pid", cmd.Process.Pid)
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			var werr error
			select {
			case werr = <-exited:
			case <-r.ctx.Done():
				_ = cmd.Process.Signal(syscall.SIGTERM)
				select {
				case werr = <-exited:
				case <-time.After(stopGrace):
					_ = cmd.Process.Kill()
					werr = <-exited
				}
			}
			p.firstDone()

			p.mu.Lock()
			inv, ready, initErr := p.current, p.ready, p.initErr
			p.current, p.running = nil, false
			p.mu.Unlock()
			if r.ctx.Err() != nil {
				if inv != nil {
					inv.finish(nil, ErrClosed)
				}
				return
			}
			exit := exitError(werr)
			cause := fmt.Errorf("emulator: function process exited: %w", exit)
			if initErr != nil {
				cause = fmt.Errorf("emulator: function init failed (%w), and its process exited: %w", initErr, exit)
			} else if !ready {
				cause = fmt.Errorf("emulator: function process exited during init: %w", exit)
			}
			r.log.Error("emulator: function process exited", "proc", p.n, "err", cause)
			if inv != nil {
				inv.finish(nil, cause)
			} else if !ready {
				p.failWaiting(cause)
			}
			if ready {
				backoff = minBackoff
			}
		}
		select {
		case <-time.After(backoff):
		case <-r.ctx.Done():
			return
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// failWaiting fails an invocation waiting for an idle process, if there is
// one: the invocation whose cold start failed.
func (p *proc) failWaiting(err error) {
	select {
	case inv := <-p.rt.jobs:
		inv.finish(nil, err)
	default:
	}
}

// exitError is the error of a process's exit, as exec.Cmd.Wait returned
// it (an *exec.ExitError when it exited with a non-zero status or was
// killed), or one saying it exited with status 0.
func exitError(err error) error {
	if err == nil {
		return errors.New("exit status 0")
	}
	return err
}

// ServeHTTP serves the Lambda Runtime API to one process.
func (p *proc) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	path, ok := strings.CutPrefix(req.URL.Path, "/2018-06-01/runtime/")
	if !ok {
		runtimeError(w, http.StatusNotFound, "InvalidRequest", "unknown path "+req.URL.Path)
		return
	}
	switch {
	case path == "invocation/next" && req.Method == http.MethodGet:
		p.next(w, req)
	case path == "init/error" && req.Method == http.MethodPost:
		ferr := readFunctionError(req)
		p.mu.Lock()
		p.initErr = ferr
		p.mu.Unlock()
		p.rt.log.Error("emulator: function reported an init error", "proc", p.n, "err", ferr)
		accepted(w)
	case strings.HasPrefix(path, "invocation/") && req.Method == http.MethodPost:
		id, kind, _ := strings.Cut(strings.TrimPrefix(path, "invocation/"), "/")
		switch kind {
		case "response":
			p.respond(w, req, id)
		case "error":
			p.fail(w, req, id)
		default:
			runtimeError(w, http.StatusNotFound, "InvalidRequest", "unknown path "+req.URL.Path)
		}
	default:
		runtimeError(w, http.StatusNotFound, "InvalidRequest", "unknown path "+req.URL.Path)
	}
}

// next hands the process its next invocation, waiting for one.
func (p *proc) next(w http.ResponseWriter, req *http.Request) {
	r := p.rt
	p.mu.Lock()
	if !p.ready && p.running {
		p.ready = true
		cold := time.Since(p.started)
		r.mu.Lock()
		r.coldStarts = append(r.coldStarts, cold)
		r.mu.Unlock()
		r.log.Info("emulator: function process ready", "proc", p.n, "cold_start", cold)
		p.firstDone()
	}
	if p.current != nil { // it asks for more without answering: Lambda fails the invocation
		p.current.finish(nil, errors.New("emulator: the function asked for its next invocation without answering this one"))
		p.current = nil
	}
	p.mu.Unlock()

	var inv *invocation
	select {
	case inv = <-r.jobs:
	case <-req.Context().Done(): // the process exited, or Close is done with it
		return
	}
	p.mu.Lock()
	running := p.running
	if running {
		p.current = inv
	}
	p.mu.Unlock()
	if !running {
		inv.finish(nil, errors.New("emulator: function process exited"))
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Lambda-Runtime-Aws-Request-Id", inv.id)
	h.Set("Lambda-Runtime-Deadline-Ms", strconv.FormatInt(inv.deadline.UnixMilli(), 10))
	h.Set("Lambda-Runtime-Invoked-Function-Arn", r.arn)
	h.Set("Lambda-Runtime-Trace-Id", "Root="+newTraceID(time.Now())+";Parent="+newUUID()[:16]+";Sampled=0")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(inv.payload)
}

// take returns the invocation id if it is the process's current one.
func (p *proc) take(id string) *invocation {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.current == nil || p.current.id != id {
		return nil
	}
	inv := p.current
	p.current = nil
	return inv
}

// respond completes an invocation with the function's response.
func (p *proc) respond(w http.ResponseWriter, req *http.Request, id string) {
	body, err := io.ReadAll(io.LimitReader(req.Body, maxResponseSize+1))
	inv := p.take(id)
	if inv == nil {
		runtimeError(w, http.StatusBadRequest, "InvalidRequestID", "no invocation "+id+" in flight")
		return
	}
	switch {
	case err != nil:
		inv.finish(nil, fmt.Errorf("emulator: reading the function's response: %w", err))
	case len(body) > maxResponseSize:
		inv.finish(nil, &FunctionError{Type: "Function.ResponseSizeTooLarge", Message: "Response payload size exceeded maximum allowed payload size (6291556 bytes)."})
		runtimeError(w, http.StatusRequestEntityTooLarge, "RequestEntityTooLarge", "response over 6 MB")
		return
	case req.Trailer.Get("Lambda-Runtime-Function-Error-Type") != "":
		inv.finish(nil, &FunctionError{Type: req.Trailer.Get("Lambda-Runtime-Function-Error-Type"), Message: req.Trailer.Get("Lambda-Runtime-Function-Error-Body")})
	default:
		inv.finish(body, nil)
	}
	accepted(w)
}

// fail completes an invocation with the function's error.
func (p *proc) fail(w http.ResponseWriter, req *http.Request, id string) {
	ferr := readFunctionError(req)
	inv := p.take(id)
	if inv == nil {
		runtimeError(w, http.StatusBadRequest, "InvalidRequestID", "no invocation "+id+" in flight")
		return
	}
	inv.finish(nil, ferr)
	accepted(w)
}

// readFunctionError reads the error a function reports.
func readFunctionError(req *http.Request) *FunctionError {
	var body struct {
		ErrorMessage string `json:"errorMessage"`
		ErrorType    string `json:"errorType"`
	}
	b, _ := io.ReadAll(io.LimitReader(req.Body, 1<<20))
	if err := json.Unmarshal(b, &body); err != nil {
		body.ErrorMessage = string(b)
	}
	if body.ErrorType == "" {
		body.ErrorType = req.Header.Get("Lambda-Runtime-Function-Error-Type")
	}
	return &FunctionError{Type: body.ErrorType, Message: body.ErrorMessage}
}

func accepted(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusAccepted)
	_, _ = io.WriteString(w, `{"status":"OK"}`)
}

func runtimeError(w http.ResponseWriter, status int, typ, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	b, _ := json.Marshal(map[string]string{"errorType": typ, "errorMessage": msg})
	_, _ = w.Write(b)
}
