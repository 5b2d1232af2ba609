package redissync_test

import (
	"errors"
	"testing"

	"github.com/edgesync/edgesync/drivers/redissync"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/envelope"
	"github.com/edgesync/edgesync/internal/testenv"
)

var (
	keyOld   = []byte("old key of the test cluster, 32 bytes or more")
	keyNew   = []byte("new key of the test cluster, 32 bytes or more")
	keyOther = []byte("a key that no instance of the cluster accepts")
)

// In a signed cluster, hubs exchange messages across a key rotation, and
// envelopes that a stranger publishes on the channel, unsigned or signed with
// another key, and those of an unsigned hub, reach nobody and are reported.
func TestSignedCluster(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	channel := testenv.Channel(t)
	opts := func(keys ...[]byte) redissync.Options {
		return redissync.Options{Client: client, Channel: channel, Keys: keys}
	}
	a, aLog := newHub(t, opts(keyOld))         // not rotated yet
	b, bLog := newHub(t, opts(keyOld, keyNew)) // rotation, step 1: accepts both
	c, cLog := newHub(t, opts(keyNew, keyOld)) // step 2: signs with the new key
	unsigned, _ := newHub(t, redissync.Options{Client: client, Channel: channel})
	atA, atB, atC := join(t, a, "/ns", "t"), join(t, b, "/ns", "t"), join(t, c, "/ns", "t")
	atUnsigned := join(t, unsigned, "/ns", "t")

	publish(t, a, "/ns", "t", "from a")
	publish(t, c, "/ns", "t", "from c")
	publish(t, b, "/ns", "t", "from b")
	atB.waitText(t, "from a")
	atB.waitText(t, "from c") // signed with the new key, accepted by b
	atA.waitText(t, "from b")
	atC.waitText(t, "from b")
	atC.waitText(t, "from a")
	// An unsigned instance (as crossws) still reads a signed cluster.
	atUnsigned.waitText(t, "from a")

	// c signs with a key a does not accept yet.
	if err := aLog.Await(t, edge.StageDelivery, 0, waitTimeout); !errors.Is(err, envelope.ErrSignature) {
		t.Fatalf("a reported %v for c's envelope; want ErrSignature", err)
	}

	stranger := edge.NewID()
	forged := edge.Message{Namespace: "", Topic: "t", Data: edge.Text("forged")}
	plain, _ := envelope.Encode(stranger, forged)
	other, _ := envelope.NewSigner(channel, [][]byte{keyOther})
	wrong, _ := other.Encode(stranger, forged)
	for _, p := range [][]byte{plain, wrong} {
		if err := client.Publish(ctxFor(t), channel, p).Err(); err != nil {
			t.Fatalf("raw PUBLISH: %v", err)
		}
	}
	publish(t, unsigned, "/ns", "t", "from an unsigned hub")
	// a, b and c each drop the stranger's two envelopes and the unsigned
	// hub's one (a had dropped c's envelope before).
	for _, l := range []struct {
		name string
		log  *testenv.ErrorLog
		n    int
	}{{"a", aLog, 4}, {"b", bLog, 3}, {"c", cLog, 3}} {
		if err := l.log.Await(t, edge.StageDelivery, l.n-1, waitTimeout); !errors.Is(err, envelope.ErrSignature) {
			t.Errorf("%s: last report %v; want ErrSignature", l.name, err)
		}
		if got := l.log.CountIs(edge.StageDelivery, envelope.ErrSignature); got != l.n {
			t.Errorf("%s reported %d signature errors: %v; want %d", l.name, got, l.log, l.n)
		}
	}
	// Redis delivers in order: what was published before is handled.
	publish(t, b, "/ns", "t", "last")
	for _, s := range []*sink{atA, atC} {
		s.waitText(t, "last")
		if s.has("forged") || s.has("from an unsigned hub") {
			t.Error("a forged or unsigned envelope was delivered in a signed cluster")
		}
	}
	if atB.has("forged") || atB.has("from an unsigned hub") {
		t.Error("a forged or unsigned envelope was delivered to b")
	}
	if a.Stats().Errors < 4 {
		t.Errorf("Hub.Stats().Errors = %d; want the 4 drops counted", a.Stats().Errors)
	}
}

func TestEmptyKeyIsRefused(t *testing.T) {
	client := newClient(t)
	_, err := edge.New(edge.Options{Sync: redissync.New(redissync.Options{
		Client: client, Channel: testenv.Channel(t), Keys: [][]byte{keyOld, nil},
	})})
	if err == nil {
		t.Fatal("edge.New with an empty key: no error")
	}
}
