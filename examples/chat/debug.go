package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"
)

// checkDebugAddr returns an error for a -debug address that is not a
// loopback one: the profiles it serves are for the machine's own tools
// (tests/load samples the goroutine count from them), never for others.
func checkDebugAddr(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("-debug %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("-debug %q: want a loopback address, such as 127.0.0.1:6060", addr)
	}
	return nil
}

// serveDebug serves net/http/pprof's handlers under /debug/pprof/ on a
// listener at addr, and returns the address it listens on. The goroutine
// count is the first line of /debug/pprof/goroutine?debug=1. stop closes
// the listener and the connections open on it.
func serveDebug(addr string) (listening string, stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("-debug: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			slog.Error("chat debug", "err", err)
		}
	}()
	return ln.Addr().String(), func() {
		srv.Close()
		<-done
	}, nil
}
