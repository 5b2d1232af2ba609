package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// run runs the load tool with args and returns its exit code: 0, 1 for a
// run that failed (or, with -strict, lost messages), 2 for bad flags.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	cfg, err := parseConfig(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		return 2
	}
	if cfg.cpuProfile != "" {
		f, err := os.Create(cfg.cpuProfile)
		if err != nil {
			fmt.Fprintln(stderr, "load:", err)
			return 1
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(stderr, "load:", err)
			return 1
		}
		defer pprof.StopCPUProfile()
	}
	res, err := execute(ctx, cfg, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "load:", err)
		return 1
	}
	if err := writeOutputs(cfg, res, stdout); err != nil {
		fmt.Fprintln(stderr, "load:", err)
		return 1
	}
	if cfg.strict {
		if problems := res.problems(); len(problems) > 0 {
			fmt.Fprintln(stderr, "load: -strict:", problems)
			return 1
		}
	}
	return 0
}

// runState is what one run's phases share.
type runState struct {
	cfg      *config
	base     time.Time // the run's clock: every due instant is relative to it
	servers  []*server
	topics   []*topic
	subs     []*receiver
	pubs     []*publisher
	dialer   *dialer
	prog     *progress
	shutdown atomic.Bool // the tool is closing the clients: ends are not drops

	dropped   atomic.Int64
	dropMu    sync.Mutex
	dropErr   error
	readers   sync.WaitGroup
	timelineM sync.Mutex
	timeline  []Sample
	measuring atomic.Int64 // ns on the run's clock when publishing began, 0 before
}

// execute runs cfg's scenario and returns its results.
func execute(ctx context.Context, cfg *config, stderr io.Writer) (*Results, error) {
	st := &runState{cfg: cfg, base: time.Now(), dialer: &dialer{}, prog: newProgress(cfg.progress, stderr)}
	res := &Results{Scenario: scenarioOf(cfg), Started: st.base.UTC()}
	toolCPU0 := toolCPU()

	// Go raises its soft limit on open files to the hard one at start.
	var lim syscall.Rlimit
	if n := cfg.clients() + 64; syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) == nil && uint64(n) > lim.Cur {
		return nil, fmt.Errorf("%d clients need %d file descriptors, and the limit is %d (ulimit -n)", cfg.clients(), n, lim.Cur)
	}
	dir, err := os.MkdirTemp("", "load")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)

	if cfg.target == "chat" || cfg.target == "lambda" {
		st.prog.phase("building the %s binaries", cfg.target)
	}
	if err := buildBinaries(ctx, cfg, dir); err != nil {
		return nil, err
	}
	channel := "edgesync-load-" + randomHex(6)
	runID := randomHex(3)
	res.Scenario.Channel = channel
	var logOut io.Writer
	if cfg.serverLog != "" {
		f, err := os.OpenFile(cfg.serverLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		logOut = &lockedWriter{w: f}
	}
	if cfg.target != "url" {
		st.prog.phase("starting %s on channel %s", serversName(cfg), channel)
	}
	st.servers, err = startServers(ctx, cfg, dir, channel, logOut)
	if err != nil {
		return nil, err
	}
	stopped := false
	defer func() {
		if !stopped {
			stopServers(st.servers)
		}
	}()
	bases := cfg.urls
	for _, s := range st.servers {
		bases = append(bases, s.url)
	}

	if err := st.makeClients(bases, runID); err != nil {
		return nil, err
	}
	sampleDone := make(chan struct{})
	sampleStopped := make(chan struct{})
	go st.sampleLoop(sampleDone, sampleStopped)
	stopSampling := sync.OnceFunc(func() { close(sampleDone); <-sampleStopped })
	defer stopSampling()
	// The run's context closes every connection, so that no read or
	// write waits past it.
	closeAll := sync.OnceFunc(st.closeClients)
	defer closeAll()
	stopWatch := context.AfterFunc(ctx, closeAll)
	defer stopWatch()

	// Connect.
	st.prog.phase("connecting %d clients (%s)", cfg.clients(), concurrencyName(cfg.connectConc))
	res.Connect = st.connect(ctx)
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if res.Connect.Connected == 0 {
		return nil, fmt.Errorf("no client connected: %s", res.Connect.FirstError)
	}
	st.startReaders()

	// Warm up: every subscriber hears every publisher of its topic.
	st.prog.phase("warming up: waiting for every subscriber to receive a probe")
	res.Ready = st.warmUp(ctx)
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}

	// Publish.
	http1 := &http.Client{Timeout: 5 * time.Second}
	defer http1.CloseIdleConnections()
	start := time.Since(st.base)
	serversAtStart := st.serverFigures(ctx, http1)
	st.measuring.Store(int64(start))
	end := start + cfg.duration
	if len(st.pubs) == 0 {
		st.prog.phase("holding %d connections for %v", res.Connect.Connected, cfg.duration)
	} else if cfg.rate > 0 {
		st.prog.phase("publishing %g messages/s for %v", cfg.rate, cfg.duration)
	} else {
		st.prog.phase("publishing with a window of %d for %v", cfg.window, cfg.duration)
	}
	st.publish(ctx, start, end)
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}

	// Drain.
	expected := st.expected()
	drainEnd := st.drain(ctx, expected)
	active := drainEnd - start
	st.measuring.Store(-1) // no more timeline samples
	stopSampling()
	serversAtEnd := st.serverFigures(ctx, http1)

	// Close the clients, then stop the servers.
	st.shutdown.Store(true)
	closeAll()
	st.readers.Wait()
	st.prog.phase("stopping the servers")
	for i, s := range st.servers {
		s.sample()
		serversAtEnd[i].cpu = s.cpuNow()
	}
	stopServers(st.servers)
	stopped = true
	st.prog.done()

	st.collect(res, expected, active, serversAtStart, serversAtEnd)
	res.Tool = ToolFigures{CPUSeconds: (toolCPU() - toolCPU0).Seconds(), PeakRSSBytes: toolPeakRSS()}
	return res, nil
}

// makeClients lays the clients out over the instances whose WebSocket
// URLs are bases.
func (st *runState) makeClients(bases []string, runID string) error {
	cfg := st.cfg
	n := len(bases)
	pubInstance := func(t, k int) int { return (t + k) % n }
	subInstance := func(t, j int) int { return (t + j + 1) % n }
	if n == 1 {
		subInstance = func(int, int) int { return 0 }
	}
	if cfg.placement == "split" {
		pubInstance = func(int, int) int { return 0 }
		subInstance = func(t, j int) int { return 1 + (t*cfg.subscribers+j)%(n-1) }
	}
	for t := range cfg.topics {
		tp := &topic{index: t, room: fmt.Sprintf("load-%s-%d", runID, t), firstPub: t * cfg.publishers}
		for k := range cfg.publishers {
			p := &publisher{id: tp.firstPub + k, topic: tp, wake: make(chan struct{}, 1), readyCh: make(chan struct{})}
			p.instance = pubInstance(t, k)
			u, err := clientURL(bases[p.instance], tp.room, fmt.Sprintf("p%d-%d", t, k))
			if err != nil {
				return err
			}
			p.url = u
			tp.pubs = append(tp.pubs, p)
			st.pubs = append(st.pubs, p)
		}
		for j := range cfg.subscribers {
			r := &receiver{topic: tp}
			r.instance = subInstance(t, j)
			u, err := clientURL(bases[r.instance], tp.room, fmt.Sprintf("s%d-%d", t, j))
			if err != nil {
				return err
			}
			r.url = u
			tp.subs = append(tp.subs, r)
			st.subs = append(st.subs, r)
		}
		st.topics = append(st.topics, tp)
	}
	return nil
}

// connect connects every client, at most -connect-concurrency at once.
func (st *runState) connect(ctx context.Context) ConnectFigures {
	cfg := st.cfg
	ctx, cancel := context.WithTimeout(ctx, cfg.connectTimeout)
	defer cancel()
	conc := cfg.connectConc
	if conc == 0 {
		conc = cfg.clients()
	}
	readLimit := int64(max(2*cfg.size, 64<<10))
	sem := make(chan struct{}, conc)
	var wg sync.WaitGroup
	began := time.Now()
	dial := func(c *client) {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			st.dialer.dial(ctx, c, readLimit)
		})
	}
	// Subscribers first, so that a publisher's first probe finds most of
	// them.
	for _, r := range st.subs {
		dial(&r.client)
	}
	for _, p := range st.pubs {
		dial(&p.client)
	}
	wg.Wait()
	took := time.Since(began)
	d := st.dialer
	var snap snapshot
	snap.add(&d.hist)
	f := ConnectFigures{
		Clients: cfg.clients(), Connected: int(d.ok.Load()), Failed: int(d.failed.Load()),
		Seconds: took.Seconds(),
		P50Ms:   ms(snap.quantile(0.5)), P99Ms: ms(snap.quantile(0.99)), MaxMs: ms(time.Duration(snap.max)),
	}
	if took > 0 {
		f.PerSecond = float64(f.Connected) / took.Seconds()
	}
	if d.firstErr != nil {
		f.FirstError = d.firstErr.Error()
	}
	// Only the connected subscribers count from now on.
	for _, tp := range st.topics {
		tp.subs = slices.DeleteFunc(tp.subs, func(r *receiver) bool { return r.conn == nil })
	}
	st.subs = slices.DeleteFunc(st.subs, func(r *receiver) bool { return r.conn == nil })
	return f
}

// startReaders starts a reader goroutine for every connected client.
func (st *runState) startReaders() {
	// Twice a message: the tool's messages fit, anything longer is not
	// one of them.
	bufSize := max(2*st.cfg.size, 512)
	for _, tp := range st.topics {
		for _, p := range tp.pubs {
			p.readyN = int64(len(tp.subs))
		}
		for _, r := range tp.subs {
			r.watch = make([]bool, len(tp.pubs))
		}
		for k, p := range tp.pubs {
			if len(tp.subs) == 0 {
				continue
			}
			// The watcher: the last subscriber on another instance, or the
			// last one.
			w := tp.subs[len(tp.subs)-1]
			for _, r := range slices.Backward(tp.subs) {
				if r.instance != p.instance {
					w = r
					break
				}
			}
			w.watch[k] = true
		}
	}
	for _, r := range st.subs {
		st.readers.Go(func() { r.run(st.base, bufSize, st.ended) })
	}
	for _, p := range st.pubs {
		if p.conn != nil {
			st.readers.Go(func() { p.drainReads(bufSize, st.ended) })
		}
	}
}

// ended is called when a client's connection ends.
func (st *runState) ended(err error) {
	st.dialer.connected.Add(-1)
	if st.shutdown.Load() {
		return
	}
	st.dropped.Add(1)
	st.dropMu.Lock()
	if st.dropErr == nil {
		st.dropErr = err
	}
	st.dropMu.Unlock()
}

// closeClients closes every connection at once.
func (st *runState) closeClients() {
	for _, r := range st.subs {
		if r.conn != nil {
			r.conn.closeNow()
		}
	}
	for _, p := range st.pubs {
		if p.conn != nil {
			p.conn.closeNow()
		}
	}
}

// warmUp has every publisher send probes until each subscriber of its
// topic has received one, within -ready-timeout.
func (st *runState) warmUp(ctx context.Context) ReadyFigures {
	ctx, cancel := context.WithTimeout(ctx, st.cfg.readyTimeout)
	defer cancel()
	began := time.Now()
	var wg sync.WaitGroup
	var errMu sync.Mutex
	var firstErr error
	for _, p := range st.pubs {
		if p.conn == nil {
			continue
		}
		wg.Go(func() {
			if err := p.probe(ctx, st.cfg.size); err != nil && !errors.Is(err, context.DeadlineExceeded) {
				errMu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				errMu.Unlock()
			}
		})
	}
	wg.Wait()
	f := ReadyFigures{Seconds: time.Since(began).Seconds()}
	for _, p := range st.pubs {
		if p.conn != nil {
			f.Missing += int(p.readyN - p.ready.Load())
		}
	}
	if firstErr != nil {
		f.Error = firstErr.Error()
	}
	return f
}

// publish runs the publishers from start to end on the run's clock, and
// returns once they have all stopped.
func (st *runState) publish(ctx context.Context, start, end time.Duration) {
	cfg := st.cfg
	var wg sync.WaitGroup
	total := len(st.pubs)
	interval := 0.0
	if cfg.rate > 0 {
		interval = float64(time.Second) * float64(total) / cfg.rate
	}
	for i, p := range st.pubs {
		if p.conn == nil {
			continue
		}
		wg.Go(func() {
			if cfg.rate > 0 {
				offset := time.Duration(interval * float64(i) / float64(total))
				p.publishOpen(ctx, st.base, cfg.size, start, end, offset, interval)
			} else {
				p.publishWindow(ctx, st.base, cfg.size, end, int64(cfg.window))
			}
		})
	}
	if len(st.pubs) == 0 {
		timer := time.NewTimer(end - time.Since(st.base))
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
		}
	}
	wg.Wait()
}

// expected returns the deliveries the run should see: every message sent,
// once to every connected subscriber of its topic.
func (st *runState) expected() int64 {
	var n int64
	for _, tp := range st.topics {
		for _, p := range tp.pubs {
			n += p.sent.Load() * int64(len(tp.subs))
		}
	}
	return n
}

func (st *runState) delivered() int64 {
	var n int64
	for _, r := range st.subs {
		n += r.deliveries.Load()
	}
	return n
}

// drain waits until every expected delivery has arrived, or -drain has
// passed, and returns the instant, on the run's clock, it stopped waiting.
func (st *runState) drain(ctx context.Context, expected int64) time.Duration {
	deadline := time.Now().Add(st.cfg.drain)
	ticker := time.NewTicker(5 * time.Millisecond)
	defer ticker.Stop()
	for st.delivered() < expected && time.Now().Before(deadline) {
		select {
		case <-ticker.C:
		case <-ctx.Done():
			return time.Since(st.base)
		}
	}
	return time.Since(st.base)
}

// sampleLoop samples the servers' memory every second until done and,
// while publishing, records a timeline sample and shows progress.
func (st *runState) sampleLoop(done <-chan struct{}, stopped chan<- struct{}) {
	defer close(stopped)
	ticker := time.NewTicker(time.Second)
	defer ticker.Stop()
	var prev snapshot
	var prevDelivered, prevSent int64
	var prevAt time.Duration
	for {
		select {
		case <-done:
			return
		case <-ticker.C:
		}
		var rss int64
		var cpu time.Duration
		for _, s := range st.servers {
			rss += s.sample()
			cpu += s.cpuNow()
		}
		start := time.Duration(st.measuring.Load())
		if start <= 0 {
			st.prog.status(fmt.Sprintf("connected %d  servers' memory %s", st.dialer.connected.Load(), bytesName(rss)))
			continue
		}
		now := time.Since(st.base)
		var snap snapshot
		for _, r := range st.subs {
			snap.add(&r.hist)
		}
		delivered, sent := st.delivered(), st.sentTotal()
		if prevAt == 0 {
			prevAt = start
		}
		secs := (now - prevAt).Seconds()
		d := snap.sub(&prev)
		s := Sample{
			T:          (now - start).Seconds(),
			Publishing: now-start <= st.cfg.duration, // the whole second was

			Deliveries: float64(delivered-prevDelivered) / secs,
			Published:  float64(sent-prevSent) / secs,
			P50Ms:      ms(d.quantile(0.5)), P99Ms: ms(d.quantile(0.99)), MaxMs: ms(intervalMax(d)),
			Connected: st.dialer.connected.Load(), ServerRSSBytes: rss, ServerCPUSeconds: cpu.Seconds(),
		}
		prev, prevDelivered, prevSent, prevAt = snap, delivered, sent, now
		st.timelineM.Lock()
		st.timeline = append(st.timeline, s)
		st.timelineM.Unlock()
		pending := st.expected() - delivered
		st.prog.status(fmt.Sprintf("%5.0fs  %s deliveries/s  p99 %s ms (so far %s)  connected %d  pending %d  dropped %d",
			s.T, countName(s.Deliveries), msName(s.P99Ms), msName(ms(snap.quantile(0.99))), s.Connected, pending, st.dropped.Load()))
	}
}

// intervalMax returns the upper bound of the highest non-empty bucket of
// an interval's snapshot.
func intervalMax(d *snapshot) time.Duration {
	for i := len(d.counts) - 1; i >= 0; i-- {
		if d.counts[i] > 0 {
			return time.Duration(min(bucketUpper(i), d.max))
		}
	}
	return 0
}

func (st *runState) sentTotal() int64 {
	var n int64
	for _, p := range st.pubs {
		n += p.sent.Load()
	}
	return n
}

// serverFigure is one server's state at one moment.
type serverFigure struct {
	rss        int64
	goroutines int
	cpu        time.Duration
}

func (st *runState) serverFigures(ctx context.Context, client *http.Client) []serverFigure {
	figs := make([]serverFigure, len(st.servers))
	for i, s := range st.servers {
		figs[i] = serverFigure{rss: s.sample(), goroutines: s.goroutines(ctx, client), cpu: s.cpuNow()}
	}
	return figs
}

func (s *server) cpuNow() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cpu
}

// randomHex returns 2n random hex digits.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails
	return hex.EncodeToString(b)
}

// toolCPU returns the CPU time this process has used.
func toolCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// toolPeakRSS returns this process's peak resident memory in bytes.
func toolPeakRSS() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Maxrss << 10 // kB on Linux
}

// lockedWriter serialises the servers' log lines into one file.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
