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
	atA, atB, atC := testenv.Join(t, a, "/ns", "t"), testenv.Join(t, b, "/ns", "t"), testenv.Join(t, c, "/ns", "t")
	atUnsigned := testenv.Join(t, unsigned, "/ns", "t")

	testenv.Publish(t, a, "/ns", "t", "from a")
	testenv.Publish(t, c, "/ns", "t", "from c")
	testenv.Publish(t, b, "/ns", "t", "from b")
	atB.WaitText(t, "from a")
	atB.WaitText(t, "from c") // signed with the new key, accepted by b
	atA.WaitText(t, "from b")
	atC.WaitText(t, "from b")
	atC.WaitText(t, "from a")
	// An unsigned instance (as crossws) still reads a signed cluster.
	atUnsigned.WaitText(t, "from a")

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
	testenv.Publish(t, unsigned, "/ns", "t", "from an unsigned hub")
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
	testenv.Publish(t, b, "/ns", "t", "last")
	for _, s := range []*testenv.Sink{atA, atC} {
		s.WaitText(t, "last")
		if s.Has("forged") || s.Has("from an unsigned hub") {
			t.Error("a forged or unsigned envelope was delivered in a signed cluster")
		}
	}
	if atB.Has("forged") || atB.Has("from an unsigned hub") {
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
