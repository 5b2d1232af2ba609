package testenv

import "testing"

// DefaultNATSURL is the URL of the test NATS server, overridden by
// EDGESYNC_NATS_URL.
const DefaultNATSURL = "nats://127.0.0.1:4222"

// NATSURL returns the URL of the test NATS server, or skips t when it does
// not answer.
func NATSURL(t testing.TB) string {
	t.Helper()
	return service(t, "EDGESYNC_NATS_URL", DefaultNATSURL, "4222")
}
