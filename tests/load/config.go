package main

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"time"
)

// Default backplane URLs, when neither a flag nor the environment gives one.
const (
	defaultRedisURL    = "redis://127.0.0.1:6379/0"
	defaultPostgresURL = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	defaultNATSURL     = "nats://127.0.0.1:4222"
)

// Bounds every run keeps, whatever its flags.
const (
	maxDuration = 24 * time.Hour
	maxClients  = 100_000
)

// config is one run's scenario, as the flags give it.
type config struct {
	target      string   // chat, lambda, relay or url
	urls        []string // -url: the WebSocket URLs of running servers
	backplane   string   // none, cluster, redis, postgres or nats
	redisURL    string
	postgresURL string
	natsURL     string
	routed      bool
	clientRate  int // the chat servers' -client-rate, 0 for their default
	clientBytes int // the chat servers' -client-bytes-rate, 0 for their default
	instances   int
	procs       int             // Lambda processes under the emulator
	given       map[string]bool // the flags given, by name

	topics      int
	total       int // -clients: all clients together, 0 when not given
	subscribers int // per topic
	publishers  int // per topic
	placement   string
	size        int
	rate        float64 // messages per second, all publishers together; 0: window
	window      int

	duration       time.Duration
	drain          time.Duration
	readyTimeout   time.Duration
	connectTimeout time.Duration
	connectConc    int // clients connecting at once, 0 for all

	jsonPath  string
	htmlPath  string
	serverLog string
	progress  string // auto, on or off
	strict    bool

	cpuProfile string

	chatBin     string
	emulatorBin string
	lambdaBin   string
}

// clients returns the number of WebSocket clients the run opens.
func (c *config) clients() int { return c.topics * (c.subscribers + c.publishers) }

// parseConfig reads the flags. On an error, including flag.ErrHelp, it has
// printed the usage to out.
func parseConfig(args []string, getenv func(string) string, out io.Writer) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: go run ./tests/load [flags]

Starts chat servers (or targets running ones), opens real WebSocket clients
on them, publishes at a fixed rate (-rate) or as fast as a window of
messages in flight allows (-window), and reports deliveries per second,
latency percentiles, loss, duplicates, connect times, and the servers' CPU
and memory. Every address must be a loopback one. See tests/load/README.md.

Flags:
`)
		fs.PrintDefaults()
	}
	var urls string
	fs.StringVar(&c.target, "target", "chat", "what to measure: `chat` (examples/chat servers), lambda (examples/chat-lambda under the API Gateway emulator), relay (the tool's own trivial relay, the client side's ceiling) or url (running servers, -url)")
	fs.StringVar(&urls, "url", "", "comma-separated WebSocket `URLs` of running servers speaking the chat's relay contract (-target url)")
	fs.StringVar(&c.backplane, "backplane", "cluster", "the servers' backplane: `none`, cluster (Unix socket), redis, postgres or nats")
	fs.StringVar(&c.redisURL, "redis", cmp.Or(getenv("EDGESYNC_REDIS_URL"), defaultRedisURL), "Redis `URL` for -backplane redis")
	fs.StringVar(&c.postgresURL, "postgres", cmp.Or(getenv("EDGESYNC_POSTGRES_URL"), defaultPostgresURL), "Postgres `URL` for -backplane postgres")
	fs.StringVar(&c.natsURL, "nats", cmp.Or(getenv("EDGESYNC_NATS_URL"), defaultNATSURL), "NATS `URL` for -backplane nats")
	fs.BoolVar(&c.routed, "routed", false, "run the servers with -routed (redis, postgres, nats)")
	fs.IntVar(&c.clientRate, "client-rate", 0, "run the chat servers with this -client-rate: messages a second one client may send (-1: no limit; 0: the chat's default, 1000)")
	fs.IntVar(&c.clientBytes, "client-bytes-rate", 0, "run the chat servers with this -client-bytes-rate: bytes a second one client may send (-1: no limit; 0: the chat's default, 1 MiB)")
	fs.IntVar(&c.instances, "instances", 2, "chat servers to start (-target chat)")
	fs.IntVar(&c.procs, "procs", 2, "Lambda processes under the emulator (-target lambda)")
	fs.IntVar(&c.topics, "topics", 1, "topics (chat rooms)")
	fs.IntVar(&c.total, "clients", 0, "clients in all, instead of -subscribers: each topic gets an equal share, its -publishers and the rest subscribers (a multiple of -topics)")
	fs.IntVar(&c.subscribers, "subscribers", 10, "subscribing clients per topic")
	fs.IntVar(&c.publishers, "publishers", 1, "publishing clients per topic (0: idle connections only)")
	fs.StringVar(&c.placement, "placement", "spread", "where clients connect: `spread` (round robin over the instances) or split (publishers on the first instance, subscribers on the others)")
	fs.IntVar(&c.size, "size", 100, fmt.Sprintf("message size in `bytes` (at least %d)", headerLen))
	fs.Float64Var(&c.rate, "rate", 0, "publish this many `messages` per second, all publishers together, open loop; 0 publishes as fast as -window allows")
	fs.IntVar(&c.window, "window", 100, "with -rate 0, messages in flight per publisher")
	fs.DurationVar(&c.duration, "duration", 10*time.Second, "how long to publish (or, with no publishers, to hold the connections)")
	fs.DurationVar(&c.drain, "drain", 3*time.Second, "how long to wait after publishing for deliveries still on their way")
	fs.DurationVar(&c.readyTimeout, "ready-timeout", 30*time.Second, "how long the warm-up waits for every subscriber to receive")
	fs.DurationVar(&c.connectTimeout, "connect-timeout", 30*time.Second, "bound on connecting all clients")
	fs.IntVar(&c.connectConc, "connect-concurrency", 200, "clients connecting at once; 0 connects all at once (a connection storm)")
	fs.StringVar(&c.jsonPath, "json", "", "write the results as JSON to this `file` (- for stdout, instead of the table)")
	fs.StringVar(&c.htmlPath, "html", "", "write a self-contained HTML report to this `file`")
	fs.StringVar(&c.serverLog, "server-log", "", "append the servers' logs to this `file` (default: discarded, errors counted)")
	fs.StringVar(&c.progress, "progress", "auto", "live progress on stderr: `auto` (when a terminal: one updating line; otherwise a line a second), on, or off")
	fs.BoolVar(&c.strict, "strict", false, "exit 1 when a message was lost or duplicated, or a client failed to connect or dropped")
	fs.StringVar(&c.cpuProfile, "cpuprofile", "", "write the load tool's own CPU profile to this `file` (go tool pprof)")
	fs.StringVar(&c.chatBin, "chat-bin", "", "use this examples/chat `binary` instead of building one")
	fs.StringVar(&c.emulatorBin, "emulator-bin", "", "use this apigw-emulator `binary` instead of building one")
	fs.StringVar(&c.lambdaBin, "lambda-bin", "", "use this examples/chat-lambda bootstrap `binary` instead of building one")
	fail := func(err error) (*config, error) {
		fmt.Fprintln(fs.Output(), "load:", err)
		fs.Usage()
		return nil, err
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return fail(fmt.Errorf("unexpected arguments %q", fs.Args()))
	}
	c.given = map[string]bool{}
	fs.Visit(func(f *flag.Flag) { c.given[f.Name] = true })
	if urls != "" {
		c.urls = strings.Split(urls, ",")
	}
	if err := c.check(); err != nil {
		return fail(err)
	}
	return c, nil
}

// check validates a config: every figure in range, every address loopback.
func (c *config) check() error {
	switch c.target {
	case "chat", "lambda", "relay", "url":
	default:
		return fmt.Errorf("-target %q: want chat, lambda, relay or url", c.target)
	}
	switch c.backplane {
	case "none", "cluster", "redis", "postgres", "nats":
	default:
		return fmt.Errorf("-backplane %q: want none, cluster, redis, postgres or nats", c.backplane)
	}
	switch {
	case c.target == "url" && len(c.urls) == 0:
		return errors.New("-target url needs -url")
	case c.target != "url" && len(c.urls) > 0:
		return errors.New("-url needs -target url")
	case c.target == "lambda" && c.backplane != "redis" && c.backplane != "postgres":
		return errors.New("-target lambda needs -backplane redis or postgres (the Registry of connections)")
	case c.routed && c.backplane != "redis" && c.backplane != "postgres" && c.backplane != "nats":
		return errors.New("-routed needs -backplane redis, postgres or nats")
	case c.target == "chat" && c.instances > 1 && c.backplane == "none":
		return errors.New("-instances above 1 need a backplane (-backplane none serves each instance's clients alone)")
	case c.target == "relay" && c.given["instances"] && c.instances != 1:
		return errors.New("-target relay runs one instance: it has no backplane")
	}
	if c.target == "relay" {
		c.instances = 1
	}
	if c.instances < 1 || c.instances > 64 {
		return fmt.Errorf("-instances %d: want 1 to 64", c.instances)
	}
	if c.procs < 1 || c.procs > 64 {
		return fmt.Errorf("-procs %d: want 1 to 64", c.procs)
	}
	if c.total != 0 && c.topics >= 1 {
		if err := c.share(); err != nil {
			return err
		}
	}
	if c.topics < 1 || c.subscribers < 0 || c.publishers < 0 {
		return fmt.Errorf("-topics %d, -subscribers %d, -publishers %d: want 1 topic or more and no negative count", c.topics, c.subscribers, c.publishers)
	}
	if n := c.clients(); n == 0 || n > maxClients {
		return fmt.Errorf("%d clients (-topics × (-subscribers + -publishers)): want 1 to %d", n, maxClients)
	}
	switch c.placement {
	case "spread":
	case "split":
		if c.instanceCount() < 2 {
			return errors.New("-placement split needs 2 instances or more")
		}
	default:
		return fmt.Errorf("-placement %q: want spread or split", c.placement)
	}
	if c.size < headerLen || c.size > 1<<20 {
		return fmt.Errorf("-size %d: want %d to %d bytes", c.size, headerLen, 1<<20)
	}
	if c.rate < 0 || c.rate > 10_000_000 {
		return fmt.Errorf("-rate %v: want 0 to 10000000 messages per second", c.rate)
	}
	if c.rate == 0 && (c.window < 1 || c.window > 1_000_000) {
		return fmt.Errorf("-window %d: want 1 to 1000000", c.window)
	}
	for _, d := range []struct {
		name string
		d    time.Duration
		min  time.Duration
	}{{"duration", c.duration, 100 * time.Millisecond}, {"drain", c.drain, 0}, {"ready-timeout", c.readyTimeout, time.Second}, {"connect-timeout", c.connectTimeout, time.Second}} {
		if d.d < d.min || d.d > maxDuration {
			return fmt.Errorf("-%s %v: want %v to %v", d.name, d.d, d.min, maxDuration)
		}
	}
	if c.connectConc < 0 {
		return fmt.Errorf("-connect-concurrency %d: want 0 (all at once) or more", c.connectConc)
	}
	switch c.progress {
	case "auto", "on", "off":
	default:
		return fmt.Errorf("-progress %q: want auto, on or off", c.progress)
	}
	for _, u := range c.urls {
		if err := checkLoopbackURL("-url", u, "ws", "wss"); err != nil {
			return err
		}
	}
	switch c.backplane {
	case "redis":
		return checkLoopbackURL("-redis", c.redisURL, "redis", "rediss")
	case "postgres":
		return checkLoopbackURL("-postgres", c.postgresURL, "postgres", "postgresql")
	case "nats":
		return checkLoopbackURL("-nats", c.natsURL, "nats", "tls")
	}
	return nil
}

// share derives the subscribers per topic from -clients, over one topic or
// more.
func (c *config) share() error {
	switch {
	case c.given["subscribers"]:
		return errors.New("-clients and -subscribers: give one of them")
	case c.total < 0:
		return fmt.Errorf("-clients %d: want 1 or more", c.total)
	case c.total%c.topics != 0:
		return fmt.Errorf("-clients %d: want a multiple of -topics (%d)", c.total, c.topics)
	case c.total/c.topics < c.publishers:
		return fmt.Errorf("-clients %d: fewer than -topics × -publishers (%d × %d)", c.total, c.topics, c.publishers)
	}
	c.subscribers = c.total/c.topics - c.publishers
	return nil
}

// instanceCount returns how many instances clients are spread over.
func (c *config) instanceCount() int {
	switch c.target {
	case "url":
		return len(c.urls)
	case "lambda", "relay":
		return 1
	}
	return c.instances
}

// checkLoopbackURL returns an error unless raw is a URL with one of schemes
// and a loopback host: an IP address such as 127.0.0.1 or ::1, or
// localhost.
func checkLoopbackURL(name, raw string, schemes ...string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	ok := false
	for _, s := range schemes {
		ok = ok || u.Scheme == s
	}
	if !ok {
		return fmt.Errorf("%s %q: want a %s URL", name, raw, strings.Join(schemes, " or "))
	}
	if !isLoopbackHost(u.Hostname()) {
		return fmt.Errorf("%s %q: the load tool connects to loopback addresses only (127.0.0.0/8, ::1, localhost)", name, raw)
	}
	return nil
}

func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
