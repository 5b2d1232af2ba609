// Command load measures edgesync end to end: it starts chat servers (or
// targets running ones), opens real WebSocket clients on them, publishes,
// and reports deliveries per second, publish-to-delivery latency, loss,
// duplicates, connect times, and the servers' CPU and memory.
//
//	go run ./tests/load -backplane redis -instances 2 -placement split \
//		-subscribers 100 -publishers 1 -window 100 -duration 10s
//
// The README beside this file documents every flag, the scenarios it was
// made for, and what each figure means. Every run is bounded in time and
// connects to loopback addresses only.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if addr := os.Getenv(relayEnv); addr != "" {
		os.Exit(serveRelayMain(addr))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
