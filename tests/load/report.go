package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// progress shows what the run is doing on stderr: on a terminal, one line
// that updates in place; otherwise a line each time.
type progress struct {
	mu       sync.Mutex
	w        io.Writer
	off      bool
	terminal bool
	inLine   bool
	began    time.Time
}

func newProgress(mode string, w io.Writer) *progress {
	p := &progress{w: w, off: mode == "off", began: time.Now()}
	if f, ok := w.(*os.File); ok && mode == "auto" {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			p.terminal = true
		}
	}
	return p
}

// phase announces a phase of the run, on a line of its own.
func (p *progress) phase(format string, args ...any) {
	if p.off {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.endLine()
	fmt.Fprintf(p.w, "load %6.1fs: %s\n", time.Since(p.began).Seconds(), fmt.Sprintf(format, args...))
}

// status shows the live figures.
func (p *progress) status(line string) {
	if p.off {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.terminal {
		fmt.Fprintf(p.w, "\r\x1b[K%s", line)
		p.inLine = true
		return
	}
	fmt.Fprintln(p.w, line)
}

func (p *progress) endLine() {
	if p.inLine {
		fmt.Fprintln(p.w)
		p.inLine = false
	}
}

// done ends the live line.
func (p *progress) done() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.endLine()
}

// writeOutputs prints the table (unless -json - takes stdout) and writes
// the -json and -html files.
func writeOutputs(cfg *config, res *Results, stdout io.Writer) error {
	if cfg.jsonPath != "-" {
		printTable(stdout, res)
	}
	if cfg.jsonPath != "" {
		b, err := json.MarshalIndent(res, "", "  ")
		if err != nil {
			return err
		}
		b = append(b, '\n')
		if cfg.jsonPath == "-" {
			if _, err := stdout.Write(b); err != nil {
				return err
			}
		} else if err := os.WriteFile(cfg.jsonPath, b, 0o644); err != nil {
			return err
		}
	}
	if cfg.htmlPath != "" {
		f, err := os.Create(cfg.htmlPath)
		if err != nil {
			return err
		}
		if err := writeHTML(f, res); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	}
	return nil
}

// printTable prints the final table.
func printTable(w io.Writer, r *Results) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	sc := r.Scenario
	mode := fmt.Sprintf("window %d", sc.Window)
	if sc.Rate > 0 {
		mode = fmt.Sprintf("rate %g msg/s (%s deliveries/s)", sc.Rate, countName(sc.Rate*float64(sc.Subscribers)))
	}
	row := func(k, format string, args ...any) { fmt.Fprintf(tw, "%s\t%s\n", k, fmt.Sprintf(format, args...)) }
	backplane := sc.Backplane
	if backplane == "" {
		backplane = "the servers' own"
	}
	row("scenario", "%s, backplane %s%s, %d instance(s), %d topic(s) × (%d subscribers + %d publishers), %s, %d B, %s, %gs",
		sc.Target, backplane, map[bool]string{true: " routed"}[sc.Routed], sc.Instances, sc.Topics, sc.Subscribers, sc.Publishers,
		sc.Placement, sc.Size, mode, sc.DurationS)
	c := r.Connect
	row("connect", "%d/%d connected, %d failed in %.2fs (%s/s); each p50 %s ms, p99 %s ms, max %s ms",
		c.Connected, c.Clients, c.Failed, c.Seconds, countName(c.PerSecond), msName(c.P50Ms), msName(c.P99Ms), msName(c.MaxMs))
	if c.FirstError != "" {
		row("", "first connect error: %s", c.FirstError)
	}
	row("warm-up", "%.2fs, %d subscriber(s) not reached", r.Ready.Seconds, r.Ready.Missing)
	row("published", "%d messages, %s/s", r.Published, countName(r.PublishedPerSecond))
	row("deliveries", "%d of %d expected, %s/s over %.2fs", r.Delivered, r.Expected, countName(r.DeliveriesPerSecond), r.ActiveSeconds)
	row("lost", "%d", r.Lost)
	row("duplicated", "%d", r.Duplicated)
	if r.Foreign > 0 {
		row("foreign", "%d (not from the topic's publishers)", r.Foreign)
	}
	l := r.Latency
	if r.Expected > 0 {
		row("latency ms", "p50 %s  p90 %s  p99 %s  p99.9 %s  max %s  (mean %s)", msName(l.P50), msName(l.P90), msName(l.P99), msName(l.P999), msName(l.Max), msName(l.Mean))
		row("send lag ms", "p50 %s  p99 %s  max %s", msName(r.SendLag.P50), msName(r.SendLag.P99), msName(r.SendLag.Max))
		if r.TargetRate > 0 {
			f := r.LatencyFromSend
			row("from send ms", "p50 %s  p90 %s  p99 %s  p99.9 %s  max %s  (mean %s)", msName(f.P50), msName(f.P90), msName(f.P99), msName(f.P999), msName(f.Max), msName(f.Mean))
		}
	}
	if r.WindowStalls > 0 {
		row("window stalls", "%d", r.WindowStalls)
	}
	row("dropped", "%d%s", r.Dropped, map[bool]string{true: " (" + r.DropError + ")"}[r.DropError != ""])
	for _, s := range r.Servers {
		g := ""
		if s.StartGoroutines >= 0 {
			g = fmt.Sprintf(", goroutines %d → %d", s.StartGoroutines, s.EndGoroutines)
		}
		row(s.Name, "cpu %.2fs (%.2fs publishing), peak rss %s, rss %s → %s%s, %d warning/error lines",
			s.CPUSeconds, s.RunCPUSeconds, bytesName(s.PeakRSSBytes), bytesName(s.StartRSSBytes), bytesName(s.EndRSSBytes), g, s.LogProblems)
		for _, line := range s.FirstProblems {
			row("", "%s", truncate(line, 160))
		}
	}
	row("load tool", "cpu %.2fs, peak rss %s", r.Tool.CPUSeconds, bytesName(r.Tool.PeakRSSBytes))
	for _, o := range r.Outages {
		row("outage", "%.0fs to %.0fs, recovered %v", o.FromS, o.ToS, o.Recovered)
	}
	tw.Flush()
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// countName formats a count or a rate with a k or M suffix.
func countName(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case v >= 1e4:
		return fmt.Sprintf("%.1fk", v/1e3)
	}
	return fmt.Sprintf("%.0f", v)
}

// msName formats milliseconds with three significant digits or so.
func msName(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.3f", v)
}

// bytesName formats a size in MiB.
func bytesName(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

func serversName(cfg *config) string {
	switch cfg.target {
	case "chat":
		return fmt.Sprintf("%d chat server(s) over %s", cfg.instances, strings.TrimSpace(cfg.backplane+map[bool]string{true: " routed"}[cfg.routed]))
	case "lambda":
		return fmt.Sprintf("the emulator with %d chat Lambda process(es) over %s", cfg.procs, cfg.backplane)
	}
	return "the relay"
}

func concurrencyName(n int) string {
	if n == 0 {
		return "all at once"
	}
	return fmt.Sprintf("%d at a time", n)
}
