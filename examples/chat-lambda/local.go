//go:build !lambda.norpc

package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/edgesync/edgesync/apigw/emulator"
	"github.com/edgesync/edgesync/examples/internal/chatroom"
)

// stage is the emulated API's stage: the WebSocket API is at /local.
const stage = "local"

// serveLocal serves the chat under the API Gateway emulator until SIGINT or
// SIGTERM, and returns the exit status.
func serveLocal(args []string) int {
	fs := flag.NewFlagSet("chat-lambda", flag.ContinueOnError)
	addr := fs.String("addr", ":8081", "address to listen on")
	cfg := configFromEnv(os.Getenv)
	fs.StringVar(&cfg.Redis, "redis", cfg.Redis, "the Registry and backplane on Redis at this URL (EDGESYNC_REDIS_URL)")
	fs.StringVar(&cfg.Postgres, "postgres", cfg.Postgres, "the Registry and backplane on Postgres at this URL (EDGESYNC_POSTGRES_URL)")
	fs.StringVar(&cfg.Channel, "channel", cfg.Channel, "channel the instances of one chat share (EDGESYNC_CHANNEL)")
	fs.StringVar(&cfg.Secret, "secret", cfg.Secret, "sign the backplane with these comma-separated `keys` (EDGESYNC_SECRET)")
	name := fs.String("name", instanceName(os.Getenv), "the instance name the room shows for the clients (EDGESYNC_INSTANCE_NAME)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if err := runLocal(*addr, cfg, *name); err != nil {
		slog.Error("chat-lambda", "err", err)
		return 1
	}
	return 0
}

// local is the chat function served under the emulator on one listener.
type local struct {
	fn      *function
	emu     *emulator.Emulator
	handler http.Handler // the page at /, the emulated API at /local
	addr    string
}

// newLocal builds the chat under the emulator for the listener at addr;
// name is the instance name of its clients.
func newLocal(ctx context.Context, addr string, cfg chatroom.Config, name string) (*local, error) {
	endpoint := "http://" + addr + "/" + stage
	// The emulator takes any credentials; the SDK needs some to sign with.
	awsConfig := &aws.Config{
		Region:      cmp.Or(os.Getenv("AWS_REGION"), "us-east-1"),
		Credentials: credentials.NewStaticCredentialsProvider("local", "local", ""),
	}
	fn, err := newFunction(ctx, cfg, name, endpoint, awsConfig)
	if err != nil {
		return nil, err
	}
	emu, err := emulator.New(emulator.Options{Stage: stage, Handler: emulator.NewHandler(fn.handler.Handle)})
	if err != nil {
		fn.Close()
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /{$}", chatroom.Page("/"+stage))
	mux.Handle("/", emu)
	return &local{fn: fn, emu: emu, handler: mux, addr: addr}, nil
}

// Close disconnects every client (their $disconnect runs while the hub is
// open), then closes the function.
func (l *local) Close() error {
	err := l.emu.Close()
	l.fn.Close()
	return err
}

func runLocal(addr string, cfg chatroom.Config, name string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	defer ln.Close()
	l, err := newLocal(ctx, loopback(ln.Addr()), cfg, name)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: l.handler, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	slog.Info("chat-lambda listening under the API Gateway emulator",
		"page", "http://"+l.addr+"/", "websocket", "ws://"+l.addr+"/"+stage,
		"management", "http://"+l.addr+"/"+stage, "backplane", l.fn.backplane.Name, "channel", cfg.Channel)

	select {
	case err = <-served:
	case <-ctx.Done():
		stop()
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if serr := srv.Shutdown(shutdown); serr != nil && !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, fmt.Errorf("shut down HTTP server: %w", serr))
	}
	err = errors.Join(err, l.Close())
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// loopback returns the address to reach a listener at addr from this host:
// an unspecified IP (":8081" listens on every address) becomes localhost.
func loopback(addr net.Addr) string {
	host, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		return addr.String()
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "localhost"
	}
	return net.JoinHostPort(host, port)
}
