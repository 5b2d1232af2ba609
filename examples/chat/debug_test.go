package main

import (
	"bufio"
	"io"
	"net/http"
	"strings"
	"testing"
)

func TestDebugAddrLoopbackOnly(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "localhost:6060", "[::1]:6060"} {
		if err := checkDebugAddr(addr); err != nil {
			t.Errorf("%s refused: %v", addr, err)
		}
	}
	for _, addr := range []string{":6060", "0.0.0.0:6060", "192.0.2.1:6060", "example.com:80", "6060"} {
		if err := checkDebugAddr(addr); err == nil {
			t.Errorf("%s accepted", addr)
		}
	}
	if _, err := parseConfig([]string{"-debug", ":6060"}, func(string) string { return "" }, io.Discard); err == nil {
		t.Error("-debug :6060, every interface, accepted")
	}
	cfg, err := parseConfig([]string{"-debug", "127.0.0.1:6060"}, func(string) string { return "" }, io.Discard)
	if err != nil || cfg.debug != "127.0.0.1:6060" {
		t.Errorf("-debug 127.0.0.1:6060: %+v, %v", cfg, err)
	}
}

// TestDebugGoroutineCount reads the goroutine count as tests/load does.
func TestDebugGoroutineCount(t *testing.T) {
	addr, stop, err := serveDebug("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	resp, err := http.Get("http://" + addr + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "goroutine profile: total ") {
		t.Fatalf("first line %q, %v", line, err)
	}
	resp2, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp2.Body.Close()
	if resp2.StatusCode != http.StatusNotFound {
		t.Errorf("GET / on the debug listener: %s, want 404", resp2.Status)
	}
}
