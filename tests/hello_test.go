package tests

import (
	"regexp"
	"sync"
	"testing"

	"github.com/coder/websocket"

	"github.com/edgesync/edgesync/internal/testenv"
)

var (
	buildHello     = sync.OnceValues(func() (string, error) { return build("hello") })
	helloListening = regexp.MustCompile(`hello listening on (\S+)`)
)

// The README's complete program does what the README says: alone, its
// clients share a room; two of them on one Redis channel share one room; and
// SIGTERM stops it cleanly (startProgram's cleanup checks the exit).
func TestHelloProgram(t *testing.T) {
	t.Parallel()
	bin, err := buildHello()
	if err != nil {
		t.Fatal(err)
	}
	t.Run("alone", func(t *testing.T) {
		t.Parallel()
		p := startProgram(t, bin, helloListening, nil)
		a, b := dial(t, "ws://"+p.addr+"/_ws"), dial(t, "ws://"+p.addr+"/_ws")
		a.send(t, websocket.MessageText, "hi b")
		if f := b.next(t); f.data != "hi b" {
			t.Fatalf("b got %q", f.data)
		}
	})
	t.Run("redis", func(t *testing.T) {
		t.Parallel()
		env := []string{"EDGESYNC_REDIS_URL=" + testenv.RedisURL(t), "EDGESYNC_CHANNEL=" + testenv.Channel(t)}
		p1 := startProgram(t, bin, helloListening, env)
		p2 := startProgram(t, bin, helloListening, env)
		a, b := dial(t, "ws://"+p1.addr+"/_ws"), dial(t, "ws://"+p2.addr+"/_ws")
		// Each has subscribed before it listens (edge.New waits for it).
		stream(t, a, b, "from one instance to the other", 1)
		stream(t, b, a, "and back", 1)
	})
}
