// Package chatroom is the chat room that examples/chat serves on a
// long-lived server and examples/chat-lambda serves from AWS Lambda: the
// same hooks, the same page and the same backplane flags, so that clients
// of both front ends can share one room.
//
// A client connects with the query string user=NAME (its display name),
// room=NAME (optional: rooms isolate) and events=1 (optional: join and
// leave notices). Every text or binary message it sends is relayed
// unchanged to the other clients of its room, on every instance, except
// the commands who, hello and dm, which Hooks documents with the messages
// they answer.
package chatroom

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"strings"

	"github.com/edgesync/edgesync/drivers/clustersync"
	"github.com/edgesync/edgesync/drivers/natssync"
	"github.com/edgesync/edgesync/drivers/pgsync"
	"github.com/edgesync/edgesync/drivers/redissync"
	"github.com/edgesync/edgesync/edge"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"
)

// Topic is the topic of the main room's messages, to which every peer of
// the main room is subscribed; another room's is Topic + "/" + its name
// (Topics).
const Topic = "chat"

// Namespace is the namespace of the main room, whichever front end holds
// its clients, so that clients of a long-lived server and of API Gateway
// meet; the room NAME is the namespace Namespace + "/" + NAME.
const Namespace = "/chat"

//go:embed index.html
var pageTemplate string

var page = template.Must(template.New("index.html").Parse(pageTemplate))

// Page returns the handler of the chat page, whose script connects to the
// WebSocket endpoint at wsPath on the page's own host.
func Page(wsPath string) http.Handler {
	var b bytes.Buffer
	if err := page.Execute(&b, wsPath); err != nil {
		panic(err) // the template is fixed and its data a string
	}
	body := b.Bytes()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		_, _ = w.Write(body)
	})
}

// Config chooses the backplane: Redis, a Redis Cluster, Postgres, NATS or a
// Unix socket (one at most), or none.
type Config struct {
	Redis string // Redis URL
	// RedisCluster is the comma-separated HOST:PORT addresses of nodes of
	// a Redis Cluster, which relays with sharded pub/sub.
	RedisCluster string
	Postgres     string // Postgres connection string
	NATS         string // NATS URL
	Cluster      string // Unix socket path
	Channel      string
	Secret       string // comma-separated signing keys, the first signs
	// Routed relays by topic (Redis, a Redis Cluster, Postgres, NATS): an instance receives
	// only the rooms' topics its clients subscribe to. Every instance of
	// the chat sets it, or none does.
	Routed bool
}

// Backplane is what the instances of one chat share: the Sync that relays
// between them and, on Redis and Postgres, the Registry of the connections
// that API Gateway holds and the Registry where instances record the peers
// they hold in memory (edge.Options.Presence).
type Backplane struct {
	Sync     edge.Sync     // nil: alone, in memory
	Registry edge.Registry // nil: none that other processes share
	// Presence is a Registry of the same store on the channel
	// PresenceChannel(Channel), apart from Registry, whose connections are
	// posted to. nil with Registry.
	Presence edge.Registry
	Name     string // "redis", "redis-cluster", "postgres", "nats", "cluster" or "none"
	close    func()
}

// PresenceChannel returns the channel of the presence Registry of a chat on
// channel.
func PresenceChannel(channel string) string { return channel + "/presence" }

// Open opens the backplane cfg chooses.
func Open(ctx context.Context, cfg Config) (*Backplane, error) {
	keys, err := SigningKeys(cfg.Secret)
	if err != nil {
		return nil, err
	}
	switch {
	case cfg.Redis != "":
		opts, err := redis.ParseURL(cfg.Redis)
		if err != nil {
			return nil, fmt.Errorf("-redis: %w", err)
		}
		opts.ContextTimeoutEnabled = true // a relay gives up at the hub's PublishTimeout
		return redisBackplane(redis.NewClient(opts), "redis", cfg, keys)
	case cfg.RedisCluster != "":
		var addrs []string
		for _, a := range strings.Split(cfg.RedisCluster, ",") {
			if a = strings.TrimSpace(a); a != "" {
				addrs = append(addrs, a)
			}
		}
		if len(addrs) == 0 {
			return nil, errors.New("-redis-cluster: no HOST:PORT address")
		}
		return redisBackplane(redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs, ContextTimeoutEnabled: true}), "redis-cluster", cfg, keys)
	case cfg.Postgres != "":
		pool, err := pgxpool.New(ctx, cfg.Postgres)
		if err != nil {
			return nil, fmt.Errorf("-postgres: %w", err)
		}
		reg, err := pgsync.NewRegistry(pgsync.RegistryOptions{Pool: pool, Channel: cfg.Channel})
		if err != nil {
			pool.Close()
			return nil, err
		}
		presence, err := pgsync.NewRegistry(pgsync.RegistryOptions{Pool: pool, Channel: PresenceChannel(cfg.Channel)})
		if err != nil {
			pool.Close()
			return nil, err
		}
		return &Backplane{
			Sync:     pgsync.New(pgsync.Options{Pool: pool, ConnString: cfg.Postgres, Channel: cfg.Channel, Keys: keys, Routed: cfg.Routed}),
			Registry: reg, Presence: presence, Name: "postgres", close: pool.Close,
		}, nil
	case cfg.NATS != "":
		nc, err := nats.Connect(cfg.NATS, nats.NoEcho(), nats.Name("edgesync-chat"))
		if err != nil {
			return nil, fmt.Errorf("-nats: %w", err)
		}
		return &Backplane{
			Sync: natssync.New(natssync.Options{Conn: nc, Channel: natsChannel(cfg.Channel), Keys: keys, Routed: cfg.Routed}),
			Name: "nats", close: nc.Close,
		}, nil
	case cfg.Cluster != "":
		return &Backplane{
			Sync: clustersync.New(clustersync.Options{Socket: cfg.Cluster, Channel: cfg.Channel, Keys: keys}),
			Name: "cluster", close: func() {},
		}, nil
	}
	return &Backplane{Name: "none", close: func() {}}, nil
}

// Close closes the clients Open made. Close the hubs on the backplane first.
func (b *Backplane) Close() { b.close() }

// SigningKeys returns the keys of a -secret value, a comma-separated list,
// or nil when it is empty.
func SigningKeys(secret string) ([][]byte, error) {
	if secret == "" {
		return nil, nil
	}
	var keys [][]byte
	for i, k := range strings.Split(secret, ",") {
		if k == "" {
			return nil, fmt.Errorf("-secret: key %d of the comma-separated list is empty", i+1)
		}
		keys = append(keys, []byte(k))
	}
	return keys, nil
}

// natsChannel returns the NATS subject prefix of a chat channel: a channel
// name may hold characters a subject token may not.
func natsChannel(channel string) string {
	return strings.Map(func(r rune) rune {
		if r == '.' || r == '*' || r == '>' || r <= ' ' || r > '~' {
			return '_'
		}
		return r
	}, channel)
}

// ErrTwoBackplanes is returned for a Config that chooses more than one.
var ErrTwoBackplanes = errors.New("choose one backplane: -redis, -redis-cluster, -postgres, -nats or -cluster")

// ErrRoutedBackplane is returned for a routed Config on a backplane that
// does not route.
var ErrRoutedBackplane = errors.New("-routed needs -redis, -redis-cluster, -postgres or -nats")

// Check returns ErrTwoBackplanes when cfg chooses more than one backplane,
// and ErrRoutedBackplane when it routes on one that does not route.
func (cfg Config) Check() error {
	n := 0
	for _, v := range []string{cfg.Redis, cfg.RedisCluster, cfg.Postgres, cfg.NATS, cfg.Cluster} {
		if v != "" {
			n++
		}
	}
	if n > 1 {
		return ErrTwoBackplanes
	}
	if cfg.Routed && cfg.Redis == "" && cfg.RedisCluster == "" && cfg.Postgres == "" && cfg.NATS == "" {
		return ErrRoutedBackplane
	}
	return nil
}

// redisBackplane returns the Backplane named name on client: its driver and
// the Registries of its channel and of its presence records. It closes
// client on an error.
func redisBackplane(client redis.UniversalClient, name string, cfg Config, keys [][]byte) (*Backplane, error) {
	reg, err := redissync.NewRegistry(redissync.RegistryOptions{Client: client, Channel: cfg.Channel})
	if err != nil {
		client.Close()
		return nil, err
	}
	presence, err := redissync.NewRegistry(redissync.RegistryOptions{Client: client, Channel: PresenceChannel(cfg.Channel)})
	if err != nil {
		client.Close()
		return nil, err
	}
	return &Backplane{
		Sync:     redissync.New(redissync.Options{Client: client, Channel: cfg.Channel, Keys: keys, Routed: cfg.Routed}),
		Registry: reg, Presence: presence, Name: name, close: func() { client.Close() },
	}, nil
}
