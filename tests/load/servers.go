package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Bounds on the servers' lives.
const (
	startTimeout = 60 * time.Second // from exec to listening (a Lambda's cold starts included)
	stopTimeout  = 15 * time.Second // from SIGTERM to exit, then SIGKILL
	// clockTicks is the unit of utime and stime in /proc/PID/stat
	// (sysconf(_SC_CLK_TCK), 100 on every Linux that Go supports).
	clockTicks = 100
)

// Log lines that give the servers' addresses.
var (
	chatListening  = regexp.MustCompile(`chat listening addr=(\S+)`)
	debugListening = regexp.MustCompile(`chat debug listening addr=(\S+)`)
	relayListening = regexp.MustCompile(`relay listening addr=(\S+)`)
	emulatorURL    = regexp.MustCompile(`^WebSocket URL: (\S+)`)
	logProblem     = regexp.MustCompile(`\b(ERROR|WARN)\b|level=(ERROR|WARN)`)
)

// server is one process the tool started: a chat server, the emulator (with
// its Lambda processes as children), or the relay.
type server struct {
	name      string
	url       string // the WebSocket URL clients connect to, without a query
	debugAddr string // chat -debug listener, "" for none
	cmd       *exec.Cmd
	exited    chan struct{} // closed once the process has exited and its logs are read
	waitErr   error

	mu        sync.Mutex
	problems  int      // log lines at WARN or ERROR
	firstLogs []string // the first few of them
	peakRSS   int64    // bytes, the largest VmHWM seen (the process and its children)
	cpu       time.Duration
	stopping  bool
}

// buildBinaries builds what cfg needs into dir, unless flags name binaries.
func buildBinaries(ctx context.Context, cfg *config, dir string) error {
	build := func(path *string, name, pkg string, env []string, args ...string) error {
		if *path != "" {
			return nil
		}
		*path = filepath.Join(dir, name)
		cmd := exec.CommandContext(ctx, "go", append(append([]string{"build"}, args...), "-o", *path, pkg)...)
		cmd.Env = append(os.Environ(), env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build %s: %w\n%s", pkg, err, out)
		}
		return nil
	}
	switch cfg.target {
	case "chat":
		return build(&cfg.chatBin, "chat", "github.com/edgesync/edgesync/examples/chat", nil)
	case "lambda":
		if err := build(&cfg.emulatorBin, "apigw-emulator", "github.com/edgesync/edgesync/apigw/emulator/cmd/apigw-emulator", nil); err != nil {
			return err
		}
		return build(&cfg.lambdaBin, "bootstrap", "github.com/edgesync/edgesync/examples/chat-lambda", []string{"CGO_ENABLED=0"},
			"-tags", "lambda.norpc", "-trimpath", "-ldflags=-s -w")
	}
	return nil
}

// serverEnv is the environment of a server: the tool's, with no backplane
// variable, so that only the flags choose.
func serverEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "EDGESYNC_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// backplaneArgs returns the chat's flags for cfg's backplane.
func backplaneArgs(cfg *config, socket string) []string {
	var args []string
	switch cfg.backplane {
	case "cluster":
		args = []string{"-cluster", socket}
	case "redis":
		args = []string{"-redis", cfg.redisURL}
	case "postgres":
		args = []string{"-postgres", cfg.postgresURL}
	case "nats":
		args = []string{"-nats", cfg.natsURL}
	}
	if cfg.routed {
		args = append(args, "-routed")
	}
	if cfg.clientRate != 0 {
		args = append(args, "-client-rate", strconv.Itoa(cfg.clientRate))
	}
	if cfg.clientBytes != 0 {
		args = append(args, "-client-bytes-rate", strconv.Itoa(cfg.clientBytes))
	}
	return args
}

// startServers starts the processes cfg's target needs, each listening on
// a free loopback port, and returns them once all listen. On an error it
// has stopped those it started.
func startServers(ctx context.Context, cfg *config, dir, channel string, logOut io.Writer) ([]*server, error) {
	var servers []*server
	fail := func(err error) ([]*server, error) {
		stopServers(servers)
		return nil, err
	}
	switch cfg.target {
	case "chat":
		socket := filepath.Join(dir, "c.sock")
		for i := range cfg.instances {
			args := append([]string{"-addr", "127.0.0.1:0", "-debug", "127.0.0.1:0", "-channel", channel, "-name", fmt.Sprintf("load-%d", i)},
				backplaneArgs(cfg, socket)...)
			s, err := startServer(ctx, fmt.Sprintf("chat-%d", i), cfg.chatBin, args, serverEnv(), logOut, chatListening)
			if err != nil {
				return fail(err)
			}
			s.url = "ws://" + s.url + "/_ws"
			servers = append(servers, s)
		}
	case "lambda":
		env := []string{"EDGESYNC_CHANNEL=" + channel, "EDGESYNC_INSTANCE_NAME=lambda"}
		if cfg.backplane == "redis" {
			env = append(env, "EDGESYNC_REDIS_URL="+cfg.redisURL)
		} else {
			env = append(env, "EDGESYNC_POSTGRES_URL="+cfg.postgresURL)
		}
		args := []string{"-addr", "127.0.0.1:0", "-procs", strconv.Itoa(cfg.procs)}
		for _, kv := range env {
			args = append(args, "-env", kv)
		}
		args = append(args, "--", cfg.lambdaBin)
		s, err := startServer(ctx, "apigw-emulator", cfg.emulatorBin, args, serverEnv(), logOut, emulatorURL)
		if err != nil {
			return fail(err)
		}
		servers = append(servers, s)
	case "relay":
		self, err := os.Executable()
		if err != nil {
			return fail(fmt.Errorf("find the load tool's binary for its relay: %w", err))
		}
		s, err := startServer(ctx, "relay", self, nil, serverEnv(relayEnv+"=127.0.0.1:0"), logOut, relayListening)
		if err != nil {
			return fail(err)
		}
		s.url = "ws://" + s.url + "/"
		servers = append(servers, s)
	}
	return servers, nil
}

// startServer starts one process and waits until a line of its output
// (stderr or stdout) matches listening, whose first group is its address,
// or its URL for the emulator.
func startServer(ctx context.Context, name, bin string, args, env []string, logOut io.Writer, listening *regexp.Regexp) (*server, error) {
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	s := &server{name: name, cmd: cmd, exited: make(chan struct{})}
	errPipe, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	addr := make(chan string, 2)
	var readers sync.WaitGroup
	scan := func(r io.Reader) {
		defer readers.Done()
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if logOut != nil {
				fmt.Fprintf(logOut, "%s: %s\n", name, line)
			}
			if m := listening.FindStringSubmatch(line); m != nil {
				select {
				case addr <- m[1]:
				default:
				}
			}
			if m := debugListening.FindStringSubmatch(line); m != nil {
				s.mu.Lock()
				s.debugAddr = m[1]
				s.mu.Unlock()
			}
			if logProblem.MatchString(line) {
				s.mu.Lock()
				s.problems++
				if len(s.firstLogs) < 5 && !s.stopping {
					s.firstLogs = append(s.firstLogs, line)
				}
				s.mu.Unlock()
			}
		}
		_, _ = io.Copy(io.Discard, r)
	}
	readers.Add(2)
	go scan(errPipe)
	go scan(outPipe)
	go func() {
		readers.Wait()
		s.waitErr = cmd.Wait()
		close(s.exited)
	}()
	timer := time.NewTimer(startTimeout)
	defer timer.Stop()
	select {
	case s.url = <-addr:
		return s, nil
	case <-s.exited:
		return nil, fmt.Errorf("%s exited before listening: %v (see -server-log)", name, s.waitErr)
	case <-timer.C:
		err = fmt.Errorf("%s did not listen within %v", name, startTimeout)
	case <-ctx.Done():
		err = ctx.Err()
	}
	stopServers([]*server{s})
	return nil, err
}

// stopServers stops every server at once: SIGTERM, then SIGKILL after
// stopTimeout, and waits for each to exit.
func stopServers(servers []*server) {
	var wg sync.WaitGroup
	for _, s := range servers {
		wg.Go(func() { s.stop() })
	}
	wg.Wait()
}

func (s *server) stop() {
	s.sample() // the last CPU figure before it exits
	s.mu.Lock()
	s.stopping = true
	s.mu.Unlock()
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	timer := time.NewTimer(stopTimeout)
	defer timer.Stop()
	select {
	case <-s.exited:
	case <-timer.C:
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
}

// sample reads the CPU seconds and peak memory of the server's process
// and its children (the emulator's Lambda processes) from /proc, and keeps
// the largest. It returns the resident memory now, in bytes, summed over
// them.
func (s *server) sample() (rss int64) {
	var cpu time.Duration
	var hwm int64
	for _, pid := range processTree(s.cmd.Process.Pid) {
		st, err := readProc(pid)
		if err != nil {
			continue // gone meanwhile
		}
		cpu += st.cpu
		hwm += st.hwm
		rss += st.rss
	}
	s.mu.Lock()
	s.cpu = max(s.cpu, cpu)
	s.peakRSS = max(s.peakRSS, hwm)
	s.mu.Unlock()
	return rss
}

// procStats are one process's figures from /proc.
type procStats struct {
	cpu      time.Duration // user + system
	rss, hwm int64         // bytes
}

// readProc reads a process's CPU time (/proc/PID/stat utime + stime) and
// its resident and peak resident memory (/proc/PID/status VmRSS, VmHWM).
func readProc(pid int) (procStats, error) {
	var st procStats
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return st, err
	}
	// The command name, field 2, is in parentheses and may hold spaces.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return st, errors.New("malformed /proc stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return st, errors.New("malformed /proc stat")
	}
	// After the name: state is field 3, utime 14 and stime 15.
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	stt, _ := strconv.ParseInt(f[12], 10, 64)
	st.cpu = time.Duration(ut+stt) * time.Second / clockTicks
	b, err = os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return st, err
	}
	for line := range strings.Lines(string(b)) {
		k, v, ok := strings.Cut(line, ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if k == "VmRSS" {
			st.rss = n << 10
		} else {
			st.hwm = n << 10
		}
	}
	return st, nil
}

// processTree returns pid and its descendants, from /proc/PID/task/*/children.
func processTree(pid int) []int {
	pids := []int{pid}
	for i := 0; i < len(pids) && i < 256; i++ {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pids[i]))
		for _, t := range tasks {
			b, err := os.ReadFile(t)
			if err != nil {
				continue
			}
			for _, f := range strings.Fields(string(b)) {
				if c, err := strconv.Atoi(f); err == nil {
					pids = append(pids, c)
				}
			}
		}
	}
	return pids
}

// goroutines returns the chat server's goroutine count from its -debug
// listener, or -1 when it has none or does not answer.
func (s *server) goroutines(ctx context.Context, client *http.Client) int {
	s.mu.Lock()
	addr := s.debugAddr
	s.mu.Unlock()
	if addr == "" {
		return -1
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/debug/pprof/goroutine?debug=1", nil)
	if err != nil {
		return -1
	}
	resp, err := client.Do(req)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	line, _ := bufio.NewReader(resp.Body).ReadString('\n')
	n, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "goroutine profile: total ")))
	if err != nil {
		return -1
	}
	return n
}
