// Package testenv finds the services that edgesync's tests run against and
// names their channels. It also holds what the tests of several packages
// share: an ErrorLog that records reported errors, the crossws envelope
// vectors, and the leak check that every test package runs from its
// TestMain (VerifyTestMain).
//
// A test that needs Redis or Postgres asks for its URL here. When the server
// does not answer, the test is skipped with a one-line reason, unless
// EDGESYNC_REQUIRE_SERVICES=1, which turns the skip into a failure.
package testenv

import (
	"net"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/edgesync/edgesync/edge"
)

// Default service URLs, overridden by EDGESYNC_REDIS_URL and EDGESYNC_POSTGRES_URL.
const (
	DefaultRedisURL    = "redis://127.0.0.1:6379/0"
	DefaultPostgresURL = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
)

// RedisURL returns the URL of the test Redis server, or skips t when it does
// not answer.
func RedisURL(t testing.TB) string {
	t.Helper()
	return service(t, "EDGESYNC_REDIS_URL", DefaultRedisURL, "6379")
}

// PostgresURL returns the URL of the test Postgres server, or skips t when it
// does not answer.
func PostgresURL(t testing.TB) string {
	t.Helper()
	return service(t, "EDGESYNC_POSTGRES_URL", DefaultPostgresURL, "5432")
}

// Required reports whether EDGESYNC_REQUIRE_SERVICES=1 forbids skipping.
func Required() bool { return os.Getenv("EDGESYNC_REQUIRE_SERVICES") == "1" }

// Unavailable skips t with reason, or fails it when services are required.
func Unavailable(t testing.TB, reason string) {
	t.Helper()
	if Required() {
		t.Fatalf("%s (EDGESYNC_REQUIRE_SERVICES=1)", reason)
	}
	t.Skip(reason)
}

func service(t testing.TB, env, def, port string) string {
	t.Helper()
	raw := os.Getenv(env)
	if raw == "" {
		raw = def
	}
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("%s: %v", env, err)
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), port)
	}
	conn, err := net.DialTimeout("tcp", host, 2*time.Second)
	if err != nil {
		Unavailable(t, u.Scheme+" at "+host+" is unreachable: "+err.Error())
	}
	conn.Close()
	return raw
}

// Channel returns a channel name of its own for t, so that tests running at
// once never cross: "edgesync-test-" and 12 random hex digits.
func Channel(t testing.TB) string {
	t.Helper()
	return "edgesync-test-" + strings.ReplaceAll(edge.NewID(), "-", "")[:12]
}
