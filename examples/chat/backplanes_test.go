package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/examples/internal/chatroom"
	"github.com/edgesync/edgesync/internal/testenv"
)

// Two servers on NATS, and two routed servers on Redis and on Postgres, are
// one room.

func TestChatOverNATS(t *testing.T) {
	testTwoServers(t, config{nats: testenv.NATSURL(t), channel: testenv.Channel(t)})
}

func TestChatRoutedNATS(t *testing.T) {
	testTwoServers(t, config{nats: testenv.NATSURL(t), routed: true, channel: testenv.Channel(t)})
}

func TestChatRoutedRedis(t *testing.T) {
	testTwoServers(t, config{redis: testenv.RedisURL(t), routed: true, channel: testenv.Channel(t)})
}

func TestChatRoutedPostgres(t *testing.T) {
	testTwoServers(t, config{postgres: testenv.PostgresURL(t), routed: true, channel: testenv.Channel(t)})
}

func testTwoServers(t *testing.T, cfg config) {
	urlA, openedA, _ := startChatWith(t, cfg)
	urlB, openedB, _ := startChatWith(t, cfg)
	// A routed server subscribes to the room's topic in the background once
	// its first client has joined: probe until the route is in place.
	awaitRoute(t, urlA, openedA, urlB, openedB)
	awaitRoute(t, urlB, openedB, urlA, openedA)
	a, b := dial(t, urlA, openedA), dial(t, urlB, openedB)
	send(t, a, `{"user":"ann","text":"hi from A"}`)
	expect(t, b, `{"user":"ann","text":"hi from A"}`)
	send(t, b, `{"user":"bob","text":"hi from B"}`)
	expect(t, a, `{"user":"bob","text":"hi from B"}`)
}

// awaitRoute sends probes from a client of the first server until a client
// of the second receives one: the second routes the room's topic then. The
// probing clients are clients of their own, so the test's clients read
// nothing but the test's messages; they stay connected, so that the route
// stays.
func awaitRoute(t *testing.T, fromURL string, fromOpened <-chan edge.Peer, toURL string, toOpened <-chan edge.Peer) {
	t.Helper()
	from, to := dial(t, fromURL, fromOpened), dial(t, toURL, toOpened)
	got := make(chan string, 64)
	go func() {
		for {
			_, b, err := to.Read(context.Background())
			if err != nil {
				return
			}
			got <- string(b)
		}
	}()
	deadline := time.After(wait)
	for i := 0; ; i++ {
		probe := fmt.Sprintf(`{"user":"probe","text":"%d"}`, i)
		send(t, from, probe)
		retry := time.NewTimer(100 * time.Millisecond)
	wait:
		for {
			select {
			case m := <-got:
				if m == probe {
					retry.Stop()
					return
				}
			case <-retry.C:
				break wait // lost before the route was in place: send the next
			case <-deadline:
				t.Fatal("no route between the servers")
			}
		}
	}
}

func TestRoutedNeedsRedisOrPostgres(t *testing.T) {
	for _, cfg := range []chatroom.Config{{Routed: true}, {Routed: true, Cluster: "/s"}} {
		if err := cfg.Check(); !errors.Is(err, chatroom.ErrRoutedBackplane) {
			t.Errorf("%+v: %v, want ErrRoutedBackplane", cfg, err)
		}
	}
	if err := (chatroom.Config{NATS: "nats://x", Redis: "redis://y"}).Check(); !errors.Is(err, chatroom.ErrTwoBackplanes) {
		t.Errorf("NATS and Redis: %v", err)
	}
}

// Two servers on a Redis Cluster, broadcast and routed, are one room.

func TestChatOverRedisCluster(t *testing.T) {
	testTwoServers(t, config{rcluster: strings.Join(testenv.RedisCluster(t), ","), channel: testenv.Channel(t)})
}

func TestChatRoutedRedisCluster(t *testing.T) {
	testTwoServers(t, config{rcluster: strings.Join(testenv.RedisCluster(t), ","), routed: true, channel: testenv.Channel(t)})
}

// -redis-cluster is one backplane among the others, routes, and gives the
// Registry that -apigw-endpoint needs; EDGESYNC_REDIS_CLUSTER sets it.
func TestRedisClusterFlag(t *testing.T) {
	if err := (chatroom.Config{RedisCluster: "127.0.0.1:7000", Redis: "redis://y"}).Check(); !errors.Is(err, chatroom.ErrTwoBackplanes) {
		t.Errorf("Redis Cluster and Redis: %v, want ErrTwoBackplanes", err)
	}
	if err := (chatroom.Config{RedisCluster: "127.0.0.1:7000", Routed: true}).Check(); err != nil {
		t.Errorf("routed on a Redis Cluster: %v", err)
	}
	env := map[string]string{"EDGESYNC_REDIS_CLUSTER": "127.0.0.1:7000,127.0.0.1:7001"}
	cfg, err := parseConfig([]string{"-apigw-endpoint", "http://127.0.0.1:1/local"}, func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatalf("-apigw-endpoint on EDGESYNC_REDIS_CLUSTER: %v", err)
	}
	if cfg.rcluster != env["EDGESYNC_REDIS_CLUSTER"] || backplaneName(cfg) != "redis-cluster" {
		t.Errorf("config %+v, backplane %q", cfg, backplaneName(cfg))
	}
	if _, err := parseConfig([]string{"-redis-cluster", "127.0.0.1:7000", "-nats", "nats://x"}, func(string) string { return "" }, io.Discard); !errors.Is(err, chatroom.ErrTwoBackplanes) {
		t.Errorf("-redis-cluster with -nats: %v, want ErrTwoBackplanes", err)
	}
}
