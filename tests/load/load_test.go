package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgesync/edgesync/internal/testenv"
)

// binDir holds the chat binary the tests build once.
var binDir string

var buildChat = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "load-test")
	if err != nil {
		return "", err
	}
	binDir = dir
	path := filepath.Join(dir, "chat")
	if out, err := exec.Command("go", "build", "-o", path, "github.com/edgesync/edgesync/examples/chat").CombinedOutput(); err != nil {
		return "", fmt.Errorf("build chat: %v\n%s", err, out)
	}
	return path, nil
})

func chatBin(t *testing.T) string {
	t.Helper()
	path, err := buildChat()
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// runLoad runs the tool in this process with args and returns its exit
// code, its stdout and stderr.
func runLoad(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := run(ctx, args, func(string) string { return "" }, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// runJSON runs the tool with -json and returns the parsed results.
func runJSON(t *testing.T, args ...string) *Results {
	t.Helper()
	path := filepath.Join(t.TempDir(), "run.json")
	code, stdout, stderr := runLoad(t, append(args, "-progress", "off", "-json", path)...)
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var res Results
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatalf("the JSON does not parse: %v\n%s", err, b)
	}
	t.Logf("table:\n%s", stdout)
	return &res
}

// checkExact asserts that every message reached every subscriber of its
// topic exactly once.
func checkExact(t *testing.T, res *Results, topics, subs, pubs int) {
	t.Helper()
	if res.Connect.Connected != topics*(subs+pubs) || res.Connect.Failed != 0 {
		t.Errorf("connect: %+v", res.Connect)
	}
	if res.Ready.Missing != 0 {
		t.Errorf("warm-up left %d subscribers unreached", res.Ready.Missing)
	}
	if res.Published == 0 {
		t.Fatal("nothing published")
	}
	if want := res.Published * int64(subs); res.Expected != want || res.Delivered != want {
		t.Errorf("published %d to %d subscribers each: expected %d, delivered %d, want %d", res.Published, subs, res.Expected, res.Delivered, want)
	}
	if res.Lost != 0 || res.Duplicated != 0 || res.Foreign != 0 || res.Dropped != 0 {
		t.Errorf("lost %d, duplicated %d, foreign %d, dropped %d; want none", res.Lost, res.Duplicated, res.Foreign, res.Dropped)
	}
	if res.Latency.Count != res.Delivered || res.Latency.P50 <= 0 || res.Latency.P50 > res.Latency.P99 || res.Latency.P99 > res.Latency.Max {
		t.Errorf("latency: %+v", res.Latency)
	}
	if res.DeliveriesPerSecond <= 0 || res.ActiveSeconds <= 0 {
		t.Errorf("deliveries/s %v over %vs", res.DeliveriesPerSecond, res.ActiveSeconds)
	}
	var inDist int64
	for _, b := range res.Distribution {
		inDist += b.Count
	}
	if inDist != res.Delivered {
		t.Errorf("the latency distribution holds %d deliveries, want %d", inDist, res.Delivered)
	}
}

func checkServers(t *testing.T, res *Results, n int) {
	t.Helper()
	if len(res.Servers) != n {
		t.Fatalf("%d servers reported, want %d", len(res.Servers), n)
	}
	for _, s := range res.Servers {
		if s.CPUSeconds < 0 || s.PeakRSSBytes <= 0 || s.StartRSSBytes <= 0 || s.EndRSSBytes <= 0 {
			t.Errorf("server figures missing: %+v", s)
		}
		// The kernel counts CPU time in clock ticks (10 ms), so a server
		// that only held idle connections may rightly report none.
		if res.Published > 0 && s.CPUSeconds <= 0 {
			t.Errorf("%s relayed %d messages in no CPU time: %+v", s.Name, res.Published, s)
		}
		if s.ExitError != "" {
			t.Errorf("%s exited: %s", s.Name, s.ExitError)
		}
	}
}

// TestClusterOpenLoop runs two chat servers over clustersync, two topics
// with two publishers each, at a fixed rate.
func TestClusterOpenLoop(t *testing.T) {
	t.Parallel()
	htmlPath := filepath.Join(t.TempDir(), "report.html")
	res := runJSON(t, "-chat-bin", chatBin(t), "-backplane", "cluster", "-instances", "2",
		"-topics", "2", "-subscribers", "4", "-publishers", "2", "-rate", "400", "-duration", "1500ms", "-html", htmlPath)
	checkExact(t, res, 2, 4, 2)
	checkServers(t, res, 2)
	// Open loop: the schedule is kept, 400 a second for 1.5 s.
	if res.Published != 600 {
		t.Errorf("published %d at 400/s for 1.5s, want 600", res.Published)
	}
	// A message is sent at its due instant or after it, so the latency
	// from the send is never the longer one.
	if f, l := res.LatencyFromSend, res.Latency; f.Count != res.Delivered || f.P50 > l.P50 || f.P99 > l.P99 || f.Max > l.Max || f.Max <= 0 {
		t.Errorf("latency from the send %+v, from the due instant %+v", f, l)
	}
	for _, s := range res.Servers {
		if s.StartGoroutines <= 0 || s.EndGoroutines <= 0 {
			t.Errorf("%s: goroutines %d → %d, want counts from -debug", s.Name, s.StartGoroutines, s.EndGoroutines)
		}
	}
	if res.Scenario.Backplane != "cluster" || res.Scenario.Subscribers != 4 || res.Scenario.Rate != 400 {
		t.Errorf("scenario: %+v", res.Scenario)
	}
	checkHTML(t, htmlPath)
}

// TestRedisWindow runs two chat servers over Redis, the publisher on one
// and the subscribers on the other, as fast as a window allows.
func TestRedisWindow(t *testing.T) {
	t.Parallel()
	url := testenv.RedisURL(t)
	res := runJSON(t, "-chat-bin", chatBin(t), "-backplane", "redis", "-redis", url, "-instances", "2", "-placement", "split",
		"-subscribers", "5", "-publishers", "1", "-window", "10", "-duration", "1s", "-strict")
	checkExact(t, res, 1, 5, 1)
	checkServers(t, res, 2)
}

// TestRelay measures the tool's own relay, which it starts as a child
// process, and prints only JSON on stdout with -json -.
func TestRelay(t *testing.T) {
	t.Parallel()
	code, stdout, stderr := runLoad(t, "-target", "relay", "-subscribers", "3", "-publishers", "2", "-window", "5", "-duration", "500ms", "-progress", "off", "-json", "-")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var res Results
	if err := json.Unmarshal([]byte(stdout), &res); err != nil {
		t.Fatalf("stdout is not the JSON alone: %v\n%s", err, stdout)
	}
	checkExact(t, &res, 1, 3, 2)
	checkServers(t, &res, 1)
}

// TestIdleConnections holds connections with no publisher, as the idle
// and connection storm scenarios do.
func TestIdleConnections(t *testing.T) {
	t.Parallel()
	res := runJSON(t, "-chat-bin", chatBin(t), "-backplane", "none", "-instances", "1", "-clients", "50", "-publishers", "0",
		"-connect-concurrency", "0", "-duration", "1500ms")
	if res.Connect.Connected != 50 || res.Connect.Failed != 0 || res.Connect.PerSecond <= 0 || res.Connect.MaxMs <= 0 {
		t.Errorf("connect: %+v", res.Connect)
	}
	if res.Published != 0 || res.Expected != 0 || res.Dropped != 0 {
		t.Errorf("published %d, expected %d, dropped %d", res.Published, res.Expected, res.Dropped)
	}
	checkServers(t, res, 1)
	if len(res.Timeline) == 0 || res.Timeline[0].Connected != 50 || res.Timeline[0].ServerRSSBytes <= 0 {
		t.Errorf("timeline: %+v", res.Timeline)
	}
}

// checkHTML asserts that the report is one self-contained file with its
// charts.
func checkHTML(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	html := string(b)
	if !strings.HasPrefix(html, "<!DOCTYPE html>") || strings.Count(html, "<svg") != 3 || !strings.Contains(html, "<polyline") {
		t.Errorf("the report lacks its charts:\n%s", html)
	}
	// Nothing fetched: no script, stylesheet, image or frame from a URL.
	rest := strings.ReplaceAll(html, `xmlns="http://www.w3.org/2000/svg"`, "")
	for _, s := range []string{"http://", "https://", "src=", "<link", "@import", "url("} {
		if strings.Contains(rest, s) {
			t.Errorf("the report refers to something outside it: %q", s)
		}
	}
}

func TestRefusesNonLoopback(t *testing.T) {
	for _, args := range [][]string{
		{"-target", "url", "-url", "ws://example.com/_ws"},
		{"-target", "url", "-url", "ws://127.0.0.1:8080/_ws,ws://192.0.2.1:8080/_ws"},
		{"-backplane", "redis", "-redis", "redis://10.0.0.1:6379/0"},
		{"-backplane", "postgres", "-postgres", "postgres://db.example.com/test"},
		{"-backplane", "nats", "-nats", "nats://[2001:db8::1]:4222"},
	} {
		code, _, stderr := runLoad(t, args...)
		if code != 2 || !strings.Contains(stderr, "loopback") {
			t.Errorf("%q: exit %d, stderr %q; want 2 and a word on loopback", args, code, firstLine(stderr))
		}
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-target", "moon"},
		{"-backplane", "carrier-pigeon"},
		{"-target", "url"},
		{"-url", "ws://127.0.0.1:1/_ws"},
		{"-target", "lambda", "-backplane", "cluster"},
		{"-routed", "-backplane", "cluster"},
		{"-backplane", "none", "-instances", "2"},
		{"-target", "relay", "-instances", "3"},
		{"-size", "10"},
		{"-rate", "-1"},
		{"-window", "0"},
		{"-duration", "0s"},
		{"-subscribers", "-1"},
		{"-subscribers", "0", "-publishers", "0"},
		{"-clients", "10", "-subscribers", "5"},
		{"-clients", "10", "-topics", "3"},
		{"-clients", "4", "-topics", "2", "-publishers", "3"},
		{"-clients", "-4"},
		{"-placement", "split", "-instances", "1", "-backplane", "none"},
		{"-placement", "diagonal"},
		{"-connect-concurrency", "-5"},
		{"-progress", "loud"},
		{"-no-such-flag"},
		{"extra"},
	} {
		code, stdout, stderr := runLoad(t, args...)
		if code != 2 || stdout != "" || !strings.Contains(stderr, "Usage:") {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want 2 and the usage", args, code, stdout, firstLine(stderr))
		}
	}
	if code, _, stderr := runLoad(t, "-h"); code != 0 || !strings.Contains(stderr, "-subscribers") {
		t.Errorf("-h: exit %d, %q", code, firstLine(stderr))
	}
}

// TestClientsFlag gives the scenario by its clients in all: each topic
// gets an equal share, its publishers and the rest subscribers.
func TestClientsFlag(t *testing.T) {
	c, err := parseConfig([]string{"-clients", "12", "-topics", "2", "-publishers", "1"}, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.subscribers != 5 || c.clients() != 12 {
		t.Errorf("-clients 12 over 2 topics with 1 publisher each: %d subscribers a topic, %d clients; want 5 and 12", c.subscribers, c.clients())
	}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
