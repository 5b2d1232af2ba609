package clustersync

import (
	"errors"
	"slices"
	"testing"

	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/envelope"
)

var (
	keyOld   = []byte("old key of the test cluster, 32 bytes or more")
	keyNew   = []byte("new key of the test cluster, 32 bytes or more")
	keyOther = []byte("a key that no instance of the cluster accepts")
)

// In a signed cluster, instances exchange messages across a key rotation;
// frames that a stranger writes on the socket, unsigned or signed with
// another key, and the messages of an unsigned instance reach nobody and are
// reported.
func TestSignedCluster(t *testing.T) {
	socket := socketPath(t)
	opts := func(keys ...[]byte) Options { return Options{Socket: socket, Channel: "c", Keys: keys} }
	a := start(t, opts(keyOld))         // not rotated yet; the relay
	b := start(t, opts(keyOld, keyNew)) // rotation, step 1: accepts both
	c := start(t, opts(keyNew, keyOld)) // step 2: signs with the new key
	unsigned := start(t, Options{Socket: socket, Channel: "c"})

	publish(t, a, "from a")
	publish(t, c, "from c")
	publish(t, b, "from b")
	b.rec.waitFor(t, "b to receive a's and c's", func() bool { return b.rec.has("from a") && b.rec.has("from c") })
	a.rec.waitFor(t, "a to receive b's", func() bool { return a.rec.has("from b") })
	c.rec.waitFor(t, "c to receive a's and b's", func() bool { return c.rec.has("from a") && c.rec.has("from b") })
	// An unsigned instance (as crossws) still reads a signed cluster.
	unsigned.rec.waitFor(t, "the unsigned instance to receive a's", func() bool { return unsigned.rec.has("from a") })
	// c signs with a key a does not accept yet.
	if err := a.log.Await(t, edge.StageDelivery, 0, waitTimeout); !errors.Is(err, envelope.ErrSignature) {
		t.Fatalf("a reported %v for c's envelope; want ErrSignature", err)
	}

	forged := edge.Message{Namespace: "", Topic: "t", Data: edge.Text("forged")}
	plain, _ := envelope.Encode(edge.NewID(), forged)
	other, _ := envelope.NewSigner("c", [][]byte{keyOther})
	wrong, _ := other.Encode(edge.NewID(), forged)
	raw := dialRaw(t, socket)
	for _, env := range [][]byte{plain, wrong} {
		payload := append([]byte{1, 'c'}, env...)
		if _, err := raw.Write(append(header(len(payload)), payload...)); err != nil {
			t.Fatal(err)
		}
	}
	publish(t, unsigned, "from an unsigned instance")
	for _, in := range []struct {
		name string
		instance
		n int
	}{{"a", a, 4}, {"b", b, 3}, {"c", c, 3}} {
		in.log.Await(t, edge.StageDelivery, in.n-1, waitTimeout)
		if got := in.log.CountIs(edge.StageDelivery, envelope.ErrSignature); got != in.n {
			t.Errorf("%s reported %d signature errors: %v; want %d", in.name, got, in.log, in.n)
		}
		if slices.ContainsFunc(in.rec.texts(), func(s string) bool { return s == "forged" || s == "from an unsigned instance" }) {
			t.Errorf("%s received %q", in.name, in.rec.texts())
		}
	}
}

func TestEmptyKeyIsRefused(t *testing.T) {
	if _, err := New(Options{Socket: socketPath(t), Channel: "c", Keys: [][]byte{nil}})(edge.Instance{ID: "x"}); err == nil {
		t.Fatal("New with an empty key: no error")
	}
}
