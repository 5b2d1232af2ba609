// Command chat serves a chat room: a page at / and its WebSocket endpoint at
// /_ws. Every client is subscribed to topic "chat", and every message a
// client sends is published there unchanged, reaching every other client.
//
//	go run ./examples/chat [-addr :8080]
//
// Then open http://localhost:8080 in two browser windows. The page sends
// messages as JSON text, {"user": "…", "text": "…"}.
//
// Alone, the server delivers to its own clients. With a backplane, several
// servers form one chat:
//
//	go run ./examples/chat -addr :8080 -redis redis://127.0.0.1:6379/0
//	go run ./examples/chat -addr :8081 -redis redis://127.0.0.1:6379/0
//
// -redis URL, -redis-cluster HOST:PORT,…, -postgres URL, -nats URL and
// -cluster SOCKET choose the backplane (one at most), -channel NAME the
// channel the servers share. -redis-cluster takes nodes of a Redis Cluster,
// which relays with sharded pub/sub (see the README for a local one).
// -routed relays by topic on Redis, a Redis Cluster, Postgres or NATS: each
// server receives only the rooms its clients are in (every server of the
// chat alike; crossws cannot join). Each flag defaults to an environment
// variable: EDGESYNC_REDIS_URL, EDGESYNC_REDIS_CLUSTER, EDGESYNC_POSTGRES_URL,
// EDGESYNC_NATS_URL, EDGESYNC_CLUSTER_SOCKET, EDGESYNC_ROUTED (1 for on) and
// EDGESYNC_CHANNEL.
// chat -h prints them.
//
// -secret KEYS (or EDGESYNC_SECRET) signs the backplane: every server of the
// chat must be given the same secret, and drops what is not signed with it.
// KEYS is a comma-separated list, for rotation: the first signs, and any of
// them is accepted. To change the secret, run every server with "new,old",
// then "new".
//
//	EDGESYNC_SECRET=$(openssl rand -hex 32) go run ./examples/chat -redis redis://127.0.0.1:6379/0
//
// # One cluster with API Gateway
//
// With -apigw-endpoint URL (or EDGESYNC_APIGW_ENDPOINT), the server joins
// the clients of examples/chat-lambda behind an API Gateway WebSocket API:
// it uses the Registry of connections of its -redis, -redis-cluster or
// -postgres backplane (one of them is required; give it the same URL and
// -channel as the function), posts what its own clients send to the
// connections API Gateway holds, and reaches them with direct messages. URL
// is the API's
// management endpoint, https://{api-id}.execute-api.{region}.amazonaws.com/{stage},
// as the SAM template's outputs give it, or the emulator's:
//
//	go run ./examples/chat-lambda -addr :8081 -redis redis://127.0.0.1:6379/0
//	go run ./examples/chat -addr :8080 -redis redis://127.0.0.1:6379/0 -apigw-endpoint http://localhost:8081/local
//
// The AWS credentials and region come from the SDK's default chain
// (environment, shared files, instance role); the region, when none is
// configured, from the endpoint's host name. The credentials need
// execute-api:ManageConnections on the API's stage
// (arn:aws:execute-api:{region}:{account}:{api-id}/{stage}/*/@connections/*).
// For an endpoint on a loopback address over http, the local emulator,
// which takes any credentials, the server uses dummy ones (and region
// us-east-1) when none are configured, so the commands above work without
// an AWS account.
//
// # The room
//
// A client may connect with user=NAME, room=NAME and events=1 in its query
// string (see package examples/internal/chatroom): each room is a
// namespace of its own; with events=1 it receives join and leave notices;
// and it may ask who is in the room ({"type":"who"}) and send one person a
// direct message ({"type":"dm"}), on whichever instance they are. Each peer
// carries the name of its instance: -name NAME (or EDGESYNC_INSTANCE_NAME),
// by default "vm " and the listen address. Instances record their clients
// in the backplane's presence Registry, every third of -presence-ttl D (or
// EDGESYNC_PRESENCE_TTL, default 15s): the clients of an instance that died
// drop out of who within D. With -cluster or no backplane, who lists this
// instance's clients only.
//
// # Stopping
//
// SIGINT (Ctrl-C) or SIGTERM stops the server: it stops listening, sends
// every WebSocket client 1001 Going Away at once, and exits when they have
// gone, within ten seconds at most. A second signal ends it at once.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/examples/internal/chatroom"
	"github.com/edgesync/edgesync/longlived"
)

// shutdownTimeout bounds the graceful shutdown.
const shutdownTimeout = 10 * time.Second

// minPresenceTTL is the shortest -presence-ttl: records are written every
// third of it.
const minPresenceTTL = 100 * time.Millisecond

// config is what the command line and the environment choose.
type config struct {
	addr        string
	redis       string // Redis URL
	rcluster    string // comma-separated addresses of Redis Cluster nodes
	postgres    string // Postgres connection string
	nats        string // NATS URL
	cluster     string // Unix socket path
	routed      bool   // relay by topic
	channel     string
	secret      string        // comma-separated signing keys, the first signs
	apigw       string        // API Gateway management endpoint, "" for none
	name        string        // the instance attribute, "" for "vm " and the listen address
	presenceTTL time.Duration // 0 means edge.DefaultPresenceTTL
	debug       string        // loopback address serving net/http/pprof, "" for none
	clientRate  int           // messages a second one client may send, -1 for no limit
	clientBytes int           // bytes a second one client may send, -1 for no limit
}

func main() {
	cfg, err := parseConfig(os.Args[1:], os.Getenv, os.Stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		os.Exit(0) // -h: the usage is printed
	case err != nil:
		os.Exit(2) // the error and the usage are printed
	}
	if err := run(cfg); err != nil {
		slog.Error("chat", "err", err)
		os.Exit(1)
	}
}

// parseConfig reads the flags, defaulting each to its environment variable.
// On an error, including flag.ErrHelp for -h, it has printed the usage to
// out.
func parseConfig(args []string, getenv func(string) string, out io.Writer) (config, error) {
	var cfg config
	fs := flag.NewFlagSet("chat", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: chat [flags]

Serves a chat room at http://ADDR/ and its WebSocket endpoint at /_ws.
With -redis, -redis-cluster, -postgres, -nats or -cluster (one at most),
instances on the same channel form one room; -routed (Redis, Redis Cluster,
Postgres, NATS) relays by topic. With -apigw-endpoint and -redis,
-redis-cluster or -postgres, the clients of examples/chat-lambda behind
that API Gateway WebSocket API are in the room too (AWS credentials from
the default chain; dummy ones for a local emulator at a loopback http URL
when none are configured). The flags default to environment variables:
EDGESYNC_REDIS_URL, EDGESYNC_REDIS_CLUSTER, EDGESYNC_POSTGRES_URL,
EDGESYNC_NATS_URL, EDGESYNC_CLUSTER_SOCKET, EDGESYNC_ROUTED (1 for on),
EDGESYNC_CHANNEL, EDGESYNC_SECRET, EDGESYNC_APIGW_ENDPOINT,
EDGESYNC_INSTANCE_NAME, EDGESYNC_PRESENCE_TTL, EDGESYNC_CLIENT_RATE and
EDGESYNC_CLIENT_BYTES_RATE. SIGINT or SIGTERM stops the server.

Flags:
`)
		fs.PrintDefaults()
	}
	fs.StringVar(&cfg.addr, "addr", ":8080", "address to listen on")
	fs.StringVar(&cfg.redis, "redis", getenv("EDGESYNC_REDIS_URL"), "relay over Redis at this URL")
	fs.StringVar(&cfg.rcluster, "redis-cluster", getenv("EDGESYNC_REDIS_CLUSTER"), "relay over the Redis Cluster of these comma-separated `HOST:PORT` nodes, with sharded pub/sub")
	fs.StringVar(&cfg.postgres, "postgres", getenv("EDGESYNC_POSTGRES_URL"), "relay over Postgres at this URL")
	fs.StringVar(&cfg.nats, "nats", getenv("EDGESYNC_NATS_URL"), "relay over NATS at this URL")
	fs.StringVar(&cfg.cluster, "cluster", getenv("EDGESYNC_CLUSTER_SOCKET"), "relay between processes on this host over this Unix socket")
	fs.BoolVar(&cfg.routed, "routed", getenv("EDGESYNC_ROUTED") == "1", "relay by topic: each server receives only its clients' rooms (-redis, -redis-cluster, -postgres or -nats; every server of the chat alike)")
	fs.StringVar(&cfg.channel, "channel", cmp.Or(getenv("EDGESYNC_CHANNEL"), "edgesync-chat"), "channel the servers of one chat share")
	fs.StringVar(&cfg.secret, "secret", getenv("EDGESYNC_SECRET"), "sign the backplane with these comma-separated `keys`: the first signs, any is accepted (rotate with \"new,old\", then \"new\")")
	fs.StringVar(&cfg.apigw, "apigw-endpoint", getenv("EDGESYNC_APIGW_ENDPOINT"), "post to the connections of the API Gateway WebSocket API with this management endpoint `URL` (needs -redis, -redis-cluster or -postgres)")
	fs.StringVar(&cfg.name, "name", getenv("EDGESYNC_INSTANCE_NAME"), "the instance name the room shows for this server's clients (default \"vm \" and the listen address)")
	ttl, ttlErr := envDuration(getenv, "EDGESYNC_PRESENCE_TTL", edge.DefaultPresenceTTL)
	fs.DurationVar(&cfg.presenceTTL, "presence-ttl", ttl, "how long the room lists the clients of a server that died")
	fs.StringVar(&cfg.debug, "debug", "", "serve net/http/pprof at this loopback `address` (for tools measuring the server, such as tests/load)")
	rate, rateErr := envInt(getenv, "EDGESYNC_CLIENT_RATE", longlived.DefaultMessagesPerSecond)
	fs.IntVar(&cfg.clientRate, "client-rate", rate, "messages a second one client may send, sustained; a faster client is slowed down, not dropped (-1: no limit)")
	bytesRate, bytesErr := envInt(getenv, "EDGESYNC_CLIENT_BYTES_RATE", longlived.DefaultBytesPerSecond)
	fs.IntVar(&cfg.clientBytes, "client-bytes-rate", bytesRate, "bytes of messages a second one client may send, sustained (-1: no limit)")
	fail := func(err error) (config, error) {
		fmt.Fprintln(fs.Output(), err)
		fs.Usage()
		return config{}, err
	}
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if ttlErr != nil && !flagSet(fs, "presence-ttl") {
		return fail(ttlErr)
	}
	if rateErr != nil && !flagSet(fs, "client-rate") {
		return fail(rateErr)
	}
	if bytesErr != nil && !flagSet(fs, "client-bytes-rate") {
		return fail(bytesErr)
	}
	if cfg.clientRate == 0 || cfg.clientRate < -1 || cfg.clientBytes == 0 || cfg.clientBytes < -1 {
		return fail(fmt.Errorf("-client-rate %d, -client-bytes-rate %d: want a positive number, or -1 for no limit", cfg.clientRate, cfg.clientBytes))
	}
	if cfg.presenceTTL < minPresenceTTL {
		return fail(fmt.Errorf("-presence-ttl %v: want %v or more", cfg.presenceTTL, minPresenceTTL))
	}
	if err := cfg.room().Check(); err != nil {
		return fail(err)
	}
	if cfg.debug != "" {
		if err := checkDebugAddr(cfg.debug); err != nil {
			return fail(err)
		}
	}
	if cfg.apigw != "" {
		if err := checkEndpoint(cfg.apigw); err != nil {
			return fail(err)
		}
		if cfg.redis == "" && cfg.rcluster == "" && cfg.postgres == "" {
			return fail(errors.New("-apigw-endpoint needs the Registry of a -redis, -redis-cluster or -postgres backplane"))
		}
	}
	return cfg, nil
}

// envDuration returns the duration in the environment variable key, def
// when it is empty.
func envDuration(getenv func(string) string, key string, def time.Duration) (time.Duration, error) {
	v := getenv(key)
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return def, fmt.Errorf("%s: %w", key, err)
	}
	return d, nil
}

// envInt returns the integer in the environment variable key, def when it
// is empty.
func envInt(getenv func(string) string, key string, def int) (int, error) {
	v := getenv(key)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return def, fmt.Errorf("%s: %w", key, err)
	}
	return n, nil
}

// flagSet reports whether the command line set the flag name.
func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// checkEndpoint returns an error for a management endpoint that is not an
// http or https URL with a host.
func checkEndpoint(endpoint string) error {
	u, err := url.Parse(endpoint)
	if err != nil {
		return fmt.Errorf("-apigw-endpoint: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("-apigw-endpoint %q: want an http or https URL, https://{api-id}.execute-api.{region}.amazonaws.com/{stage}", endpoint)
	}
	return nil
}

// run serves the chat until SIGINT or SIGTERM, then shuts down: it stops
// listening, and at once sends every peer 1001 Going Away, closes the
// connections that never sent a request, and waits for requests under way;
// then it closes the hub and the backplane's client.
func run(cfg config) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return err
	}
	defer ln.Close()
	if cfg.debug != "" {
		addr, stopDebug, err := serveDebug(cfg.debug)
		if err != nil {
			return err
		}
		defer stopDebug()
		slog.Info("chat debug listening", "addr", addr)
	}
	backplane, hub, err := newHub(ctx, cfg, nil)
	if err != nil {
		return err
	}
	defer backplane.Close()
	defer hub.Close() // after the front end: whoever makes the hub closes it
	name := cmp.Or(cfg.name, instanceName(ln.Addr()))
	ws := longlived.New(hub, chatroom.Hooks(hub, name))
	ws.MessagesPerSecond, ws.BytesPerSecond = cfg.clientRate, cfg.clientBytes
	srv := &http.Server{Handler: newServer(ws), ReadHeaderTimeout: 10 * time.Second}
	// Browsers open connections ahead of need; one that never sent a
	// request would hold Shutdown for five seconds, the time net/http
	// gives a new connection before it counts as idle.
	var fresh freshConns
	srv.ConnState = fresh.track
	srv.RegisterOnShutdown(fresh.closeAll)

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	slog.Info("chat listening", "addr", ln.Addr().String(), "backplane", backplaneName(cfg), "channel", cfg.channel,
		"name", name, "apigw-endpoint", cmp.Or(cfg.apigw, "none"))

	select {
	case err = <-served: // the listener failed
	case <-ctx.Done():
		stop() // a second signal ends the process at once
		slog.Info("chat shutting down")
	}
	shutdown, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	// The WebSocket connections are hijacked: Shutdown neither closes nor
	// waits for them, ws.Close does, at the same time.
	var serr, cerr error
	var wg sync.WaitGroup
	wg.Go(func() { serr = srv.Shutdown(shutdown) })
	wg.Go(func() { cerr = ws.Close(shutdown) })
	wg.Wait()
	if serr != nil {
		err = errors.Join(err, fmt.Errorf("shut down HTTP server: %w", serr))
	}
	if cerr != nil {
		err = errors.Join(err, cerr)
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// freshConns tracks the connections that have not sent a request yet, so
// that shutting down can close them at once: a client waiting on one has
// sent nothing, and retries on another connection.
type freshConns struct {
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool // shutting down: new connections are closed at once
}

// track is an http.Server.ConnState hook.
func (f *freshConns) track(c net.Conn, state http.ConnState) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case state == http.StateNew && f.closed:
		// Accepted as the listener closed.
		c.Close()
	case state == http.StateNew:
		if f.conns == nil {
			f.conns = make(map[net.Conn]struct{})
		}
		f.conns[c] = struct{}{}
	default:
		delete(f.conns, c)
	}
}

// closeAll closes every connection that has not sent a request, and those
// accepted from now on.
func (f *freshConns) closeAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	for c := range f.conns {
		c.Close()
	}
	clear(f.conns)
}

// room returns the backplane cfg chooses.
func (cfg config) room() chatroom.Config {
	return chatroom.Config{
		Redis: cfg.redis, RedisCluster: cfg.rcluster, Postgres: cfg.postgres, NATS: cfg.nats, Cluster: cfg.cluster,
		Channel: cfg.channel, Secret: cfg.secret, Routed: cfg.routed,
	}
}

// newHub opens the backplane cfg chooses and starts the hub on it: with its
// presence Registry, and with an apigw.Gateway on its Registry when cfg
// has an API Gateway endpoint. onError nil logs the hub's errors.
func newHub(ctx context.Context, cfg config, onError func(error, edge.ErrorInfo)) (*chatroom.Backplane, *edge.Hub, error) {
	backplane, err := chatroom.Open(ctx, cfg.room())
	if err != nil {
		return nil, nil, err
	}
	opts := edge.Options{Sync: backplane.Sync, Presence: backplane.Presence, PresenceTTL: cfg.presenceTTL, OnError: onError}
	if cfg.apigw != "" {
		gw, err := newGateway(ctx, cfg.apigw, backplane.Registry)
		if err != nil {
			backplane.Close()
			return nil, nil, err
		}
		opts.Gateway = gw
	}
	hub, err := edge.New(opts)
	if err != nil {
		backplane.Close()
		return nil, nil, fmt.Errorf("start hub: %w", err)
	}
	return backplane, hub, nil
}

// instanceName is the default instance attribute of a server listening at
// addr: "vm " and the address, with the host name for an address that
// listens on every interface.
func instanceName(addr net.Addr) string {
	host, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		return "vm " + addr.String()
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "localhost"
		if h, err := os.Hostname(); err == nil && h != "" {
			host = h
		}
	}
	return "vm " + net.JoinHostPort(host, port)
}

func backplaneName(cfg config) string {
	switch {
	case cfg.redis != "":
		return "redis"
	case cfg.rcluster != "":
		return "redis-cluster"
	case cfg.postgres != "":
		return "postgres"
	case cfg.nats != "":
		return "nats"
	case cfg.cluster != "":
		return "cluster"
	}
	return "none (in memory, this process only)"
}

// newServer routes the page and the WebSocket endpoint.
func newServer(ws http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /{$}", chatroom.Page("/_ws"))
	mux.Handle("GET /_ws", ws)
	return mux
}
