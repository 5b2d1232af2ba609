package tests

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/edgesync/edgesync/internal/testenv"
)

// These tests run one chat room across a mixed cluster, each instance its
// own OS process: two long-lived examples/chat servers, vm1 and vm2, which
// post what they originate to API Gateway's connections themselves, and
// the chat Lambda's bootstrap in two processes under the API Gateway
// emulator, all on one Redis or Postgres channel; two clients on each
// instance, and more in another room.

func TestMixedClusterRedis(t *testing.T) {
	testMixedCluster(t, "redis", testenv.RedisURL(t))
}

func TestMixedClusterPostgres(t *testing.T) {
	testMixedCluster(t, "postgres", testenv.PostgresURL(t))
}

// mixedInstances are the instances of every mixed cluster test, the
// Lambda's clients on its two processes as API Gateway dispatches them.
var mixedInstances = []string{"vm1", "vm2", lambdaInstance}

func testMixedCluster(t *testing.T, backplane, url string) {
	t.Parallel()
	m := startMixedCluster(t, backplane, url, []string{"vm1", "vm2"})
	var room, other []*chatClient
	a, b := map[string]*chatClient{}, map[string]*chatClient{}
	for _, in := range mixedInstances {
		a[in], b[in] = m.join(t, in, in+"-a", ""), m.join(t, in, in+"-b", "")
		room = append(room, a[in], b[in])
		other = append(other, m.join(t, in, in+"-other", "room=other"))
	}

	// Every pair of instances, the same one included: every client of a
	// room receives what every other one says exactly once, and its own
	// never; the rooms see nothing of each other.
	exchange(t, "hello", room, other)
	exchange(t, "end", room, other)

	// Binary from a VM client: binary on the long-lived servers, its
	// base64 as text on API Gateway.
	bin1, bin2 := []byte{0, 1, 2, 0xfe, 0xff}, []byte("\x80binary\x00")
	a["vm1"].send(t, websocket.MessageBinary, string(bin1))
	b["vm2"].send(t, websocket.MessageBinary, string(bin2))
	for _, c := range room {
		var want []frame
		for _, sent := range []struct {
			from *chatClient
			data []byte
		}{{a["vm1"], bin1}, {b["vm2"], bin2}} {
			switch {
			case c == sent.from:
			case c.instance == lambdaInstance:
				want = append(want, base64Text(sent.data))
			default:
				want = append(want, frame{websocket.MessageBinary, string(sent.data)})
			}
		}
		c.expect(t, "binary", want)
	}
	exchange(t, "after binary", room, other)

	// A direct message from a client of each instance to a client of each,
	// and to a peer that does not exist, which is not an error.
	for _, from := range mixedInstances {
		for _, to := range append(mixedInstances, "nobody") {
			id := "no-such-peer"
			if to != "nobody" {
				id = b[to].id
			}
			a[from].send(t, websocket.MessageText, dmCommand(id, "dm "+from+" to "+to))
		}
	}
	for _, from := range mixedInstances {
		var sent []serverMessage
		for _, to := range append(mixedInstances, "nobody") {
			id := "no-such-peer"
			if to != "nobody" {
				id = b[to].id
			}
			sent = append(sent, serverMessage{"type": "dm-sent", "to": id, "text": "dm " + from + " to " + to})
		}
		a[from].expectServer(t, "dm-sent", sent...)
	}
	for _, to := range mixedInstances {
		var got []serverMessage
		for _, from := range mixedInstances {
			got = append(got, serverMessage{"type": "dm", "from": a[from].id, "user": a[from].user, "text": "dm " + from + " to " + to})
		}
		b[to].expectServer(t, "dm", got...)
	}

	// Presence lists every peer of the room, on every instance, with its
	// instance, asked from a long-lived server and from the Lambda; and
	// the other room's peers apart.
	deadline := time.Now().Add(wait)
	a["vm1"].awaitWho(t, "who", presenceOf(room...), deadline)
	b[lambdaInstance].awaitWho(t, "who", presenceOf(room...), deadline)
	other[1].awaitWho(t, "who in the other room", presenceOf(other...), deadline)

	// Join and leave notices reach the clients that ask for them (events=1),
	// on every instance, from every instance, and not the peer itself. The
	// watchers are in a room of their own, so that the notices are all
	// they receive besides the room's relay. A watcher may or may not get
	// the join notices of those that joined before it: they are on their
	// way through the backplane as it joins. It skips those; every other
	// notice it must get exactly once.
	var watchers []*chatClient
	var joined []serverMessage
	for _, in := range mixedInstances {
		w := m.join(t, in, in+"-watcher", "room=events&events=1", joined...)
		for _, o := range watchers {
			o.expectServer(t, "join", notice("join", w))
		}
		watchers = append(watchers, w)
		joined = append(joined, notice("join", w))
	}
	for _, in := range mixedInstances {
		c := m.join(t, in, in+"-visitor", "room=events")
		c.leave(t)
		for _, w := range watchers {
			w.expectServer(t, "join and leave", notice("join", c), notice("leave", c))
		}
	}

	// A client cannot forge the server's messages: they are not relayed.
	for _, in := range mixedInstances {
		a[in].send(t, websocket.MessageText, `{"type":"join","id":"forged","user":"mallory","instance":"nowhere"}`)
		b[in].send(t, websocket.MessageText, `{"type":"dm","from":"forged","text":"from nobody"}`)
	}

	// Nothing else was on its way to anyone.
	exchange(t, "last", room, other, watchers)
}

// notice is the join or leave notice of c.
func notice(kind string, c *chatClient) serverMessage {
	return serverMessage{"type": kind, "id": c.id, "user": c.user, "instance": c.instance}
}

// dmCommand is the command that sends text to the peer with id.
func dmCommand(id, text string) string {
	b, _ := json.Marshal(struct {
		Type string `json:"type"`
		To   string `json:"to"`
		Text string `json:"text"`
	}{"dm", id, text})
	return string(b)
}

// presenceMargin is how long after the presence TTL the peers of a dead
// instance may still be listed: the time to ask and answer (a who is
// bounded to 2 s by the room), and a scheduling margin for loaded machines.
const presenceMargin = 3 * time.Second

// TestMixedClusterInstanceKilled kills the long-lived server vm2 in the
// middle of a stream: the other instances deliver to each other exactly as
// before (VM and Lambda both ways, Lambda to Lambda), vm2's clients are
// disconnected, and they drop out of who within the presence TTL that the
// long-lived servers are given (-presence-ttl), and a margin.
func TestMixedClusterInstanceKilled(t *testing.T) {
	t.Parallel()
	const ttl = 2 * time.Second
	m := startMixedCluster(t, "redis", testenv.RedisURL(t), []string{"vm1", "vm2"}, "-presence-ttl", ttl.String())
	c := map[string]*chatClient{}
	var all []*chatClient
	for _, in := range mixedInstances {
		for _, n := range []string{"-a", "-b"} {
			c[in+n] = m.join(t, in, in+n, "")
			all = append(all, c[in+n])
		}
	}
	survivors := []*chatClient{c["vm1-a"], c["vm1-b"], c["lambda-a"], c["lambda-b"]}
	exchange(t, "before", all)
	c["vm1-a"].awaitWho(t, "who before the kill", presenceOf(all...), time.Now().Add(wait))

	// A client of vm1 and one of the Lambda each send a stream; vm2 dies
	// half way through.
	const n = 20
	var killed time.Time
	var fromVM, fromLambda []frame
	for i := range n {
		if i == n/2 {
			m.vms["vm2"].kill(t)
			killed = time.Now()
		}
		for _, from := range []*chatClient{c["vm1-a"], c["lambda-a"]} {
			line := chatLine(from.user, fmt.Sprintf("stream %d from %s", i, from.user))
			from.send(t, websocket.MessageText, line)
			if from == c["vm1-a"] {
				fromVM = append(fromVM, text(line))
			} else {
				fromLambda = append(fromLambda, text(line))
			}
		}
	}
	c["vm1-a"].expect(t, "stream", fromLambda)
	c["lambda-a"].expect(t, "stream", fromVM)
	c["vm1-b"].expect(t, "stream", append(fromVM, fromLambda...))
	c["lambda-b"].expect(t, "stream", append(fromVM, fromLambda...))
	for _, gone := range []*chatClient{c["vm2-a"], c["vm2-b"]} {
		if code := gone.closed(t); code != -1 {
			t.Errorf("%s: closed with status %d, want the connection dropped", gone, code)
		}
	}

	exchange(t, "after", survivors)

	// A direct message to a client of the dead instance reaches nobody,
	// and is no error for its sender, on either kind of instance.
	for _, from := range []*chatClient{c["vm1-a"], c["lambda-a"]} {
		from.send(t, websocket.MessageText, dmCommand(c["vm2-a"].id, "too late"))
		from.expectServer(t, "dm to the dead", serverMessage{"type": "dm-sent", "to": c["vm2-a"].id, "text": "too late"})
	}
	exchange(t, "end", survivors)

	// vm2's clients drop out of who, asked from vm1 and from the Lambda.
	deadline := killed.Add(ttl + presenceMargin)
	c["vm1-a"].awaitWho(t, "who after the kill", presenceOf(survivors...), deadline)
	t.Logf("vm2's clients left who %v after it was killed", time.Since(killed).Round(time.Millisecond))
	c["lambda-b"].awaitWho(t, "who after the kill", presenceOf(survivors...), deadline)
	exchange(t, "last", survivors)
}

// TestMixedClusterCrossws adds a crossws chat server on Node to the
// cluster's Redis channel: its clients and the long-lived server's chat
// both ways, text and binary, and the Lambda's reach it through the
// backplane; but what crossws publishes never reaches API Gateway's
// clients, since only the instance where a message is published posts to
// them, and crossws has no Gateway (as documented).
func TestMixedClusterCrossws(t *testing.T) {
	crosswsModules(t)
	t.Parallel()
	m := startMixedCluster(t, "redis", testenv.RedisURL(t), []string{"vm1"})
	addr := m.startCrosswsChat(t)
	na, nb := joinCrossws(t, addr, "node-a"), joinCrossws(t, addr, "node-b")
	va, vb := m.join(t, "vm1", "vm1-a", ""), m.join(t, "vm1", "vm1-b", "")
	la := m.join(t, lambdaInstance, "lambda-a", "")
	all := []*chatClient{na, nb, va, vb, la}

	// Everyone says hello: each hears every other one, once, except that
	// the Lambda's client hears none of the crossws clients.
	for _, c := range all {
		c.send(t, websocket.MessageText, chatLine(c.user, "hello from "+c.user))
	}
	for _, c := range all {
		var want []frame
		for _, o := range all {
			if o != c && (c != la || o.instance != "crossws") {
				want = append(want, text(chatLine(o.user, "hello from "+o.user)))
			}
		}
		c.expect(t, "hello", want)
	}
	endMarker(t, va, nb, vb, la, na)

	// Binary both ways: binary everywhere but on API Gateway, which gets
	// the VM's as base64 text, and not crossws's.
	fromNode, fromVM := []byte{0xff, 0, 0x80}, []byte{1, 2, 3, 0}
	na.send(t, websocket.MessageBinary, string(fromNode))
	va.send(t, websocket.MessageBinary, string(fromVM))
	binary := func(b []byte) frame { return frame{websocket.MessageBinary, string(b)} }
	na.expect(t, "binary", []frame{binary(fromVM)})
	nb.expect(t, "binary", []frame{binary(fromNode), binary(fromVM)})
	va.expect(t, "binary", []frame{binary(fromNode)})
	vb.expect(t, "binary", []frame{binary(fromNode), binary(fromVM)})
	la.expect(t, "binary", []frame{base64Text(fromVM)})
	endMarker(t, vb, na, nb, va, la)
}

// endMarker has from say "end", which each of to must receive next: so
// nothing else was on its way to them through from's instance.
func endMarker(t *testing.T, from *chatClient, to ...*chatClient) {
	t.Helper()
	line := chatLine(from.user, "end from "+from.user)
	from.send(t, websocket.MessageText, line)
	for _, c := range to {
		c.expect(t, "the end marker", []frame{text(line)})
	}
}
