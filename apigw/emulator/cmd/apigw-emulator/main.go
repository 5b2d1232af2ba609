package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/edgesync/edgesync/apigw/emulator"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "apigw-emulator:", err)
		os.Exit(1)
	}
}

// envFlags collects repeated -env flags.
type envFlags []string

func (e *envFlags) String() string { return strings.Join(*e, " ") }

func (e *envFlags) Set(v string) error {
	if !strings.Contains(v, "=") {
		return fmt.Errorf("want KEY=VALUE, got %q", v)
	}
	*e = append(*e, v)
	return nil
}

// run serves the emulator until ctx is done.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("apigw-emulator", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:8081", "address to serve on")
	stage := fs.String("stage", emulator.DefaultStage, "the API's stage")
	procs := fs.Int("procs", 1, "copies of the function to run")
	routeSel := fs.String("route-selection", emulator.DefaultRouteSelectionExpression, "route selection expression")
	routes := fs.String("routes", "", "comma-separated custom route keys")
	routeResponses := fs.String("route-responses", "", "comma-separated route keys with a route response ($default may be one)")
	idle := fs.Duration("idle-timeout", emulator.DefaultIdleTimeout, "idle connection timeout")
	maxDur := fs.Duration("max-duration", emulator.DefaultMaxDuration, "maximum connection duration")
	timeout := fs.Duration("timeout", emulator.DefaultTimeout, "the function's timeout")
	verbose := fs.Bool("v", false, "log connections, invocation errors and process events")
	var env envFlags
	fs.Var(&env, "env", "KEY=VALUE for the function's environment (repeatable)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: apigw-emulator [flags] -- COMMAND [ARGS...]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	command := fs.Args()
	if len(command) == 0 {
		fs.Usage()
		return errors.New("no function command given")
	}

	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	defer ln.Close()
	host := ln.Addr().String()
	if h, port, err := net.SplitHostPort(host); err == nil {
		if ip := net.ParseIP(h); ip != nil && ip.IsUnspecified() {
			host = net.JoinHostPort("127.0.0.1", port)
		}
	}
	endpoint := "http://" + host + "/" + *stage

	var fnEnv []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "AWS_") {
			fnEnv = append(fnEnv, kv)
		}
	}
	fnEnv = append(fnEnv, "EDGESYNC_APIGW_ENDPOINT="+endpoint)
	fnEnv = append(fnEnv, env...)

	rt, err := emulator.NewRuntime(ctx, emulator.RuntimeOptions{
		Command: command,
		Procs:   *procs,
		Env:     fnEnv,
		Stdout:  stdout,
		Stderr:  stderr,
		Timeout: *timeout,
		Logger:  log,
	})
	if err != nil {
		return err
	}
	defer rt.Close()
	if cs := rt.ColdStarts(); len(cs) > 0 {
		log.Info("function ready", "procs", *procs, "cold_start", cs[0])
	}

	em, err := emulator.New(emulator.Options{
		Stage:                    *stage,
		Handler:                  rt,
		RouteSelectionExpression: *routeSel,
		Routes:                   splitList(*routes),
		RouteResponses:           splitList(*routeResponses),
		IdleTimeout:              *idle,
		MaxDuration:              *maxDur,
		Logger:                   log,
	})
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: em, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	fmt.Fprintf(stdout, "WebSocket URL: ws://%s/%s\n", host, *stage)
	fmt.Fprintf(stdout, "Management endpoint: %s\n", endpoint)

	select {
	case <-ctx.Done():
	case err := <-served:
		em.Close()
		return err
	}
	fmt.Fprintln(stdout, "stopping")
	em.Close() // closes every client, invoking $disconnect for each
	shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = srv.Shutdown(shutdown)
	return nil
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(v string) []string {
	var items []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			items = append(items, s)
		}
	}
	return items
}
