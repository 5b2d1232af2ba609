package drivertest

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/edgesync/edgesync/edge"
)

// hostileParts are the bytes that break naive key names and rows: control
// characters, Redis key separators, hash-tag braces and glob characters, the
// escapes of a key scheme, SQL quotes and comments, and invalid UTF-8.
var hostileParts = []string{
	"\x00", "\n", "\r", "\r\n", "\t", "\x7f", "\x1b[0m",
	":", "::", "{", "}", "{x}", "}{", "*", "?", "[", "]", "[a-z]", "^", "|",
	"%", "%3A", "%25", "%7B", "\\x00",
	"'", `"`, "--", ";", `\`, "'; DROP TABLE edgesync; --", "/*", "*/", "$1", "?::text",
	"\xff", "\xc3\x28", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xc0\x80",
	" ", "ü ✓", "",
}

// hostileNames returns names made of token and the hostile parts: each part
// before the token and after it, so that names are prefixes and suffixes of
// each other (token, token+":", token+"::"…), and two huge names of 64 KiB,
// one of random bytes, which no index compresses, and one that differs from
// it in its last byte only. token makes them the case's own.
func hostileNames(token string) []string {
	var names []string
	for _, p := range hostileParts {
		names = append(names, token+p)
		if p != "" {
			names = append(names, p+token)
		}
	}
	rng := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	huge := make([]byte, 64<<10)
	for i := range huge {
		huge[i] = byte(rng.Uint32())
	}
	a := token + string(huge)
	b := a[:len(a)-1] + string(a[len(a)-1]^1)
	return append(names, a, b)
}

// short describes a name in a failure message: its start, quoted, and its
// length.
func short(s string) string {
	if len(s) <= 40 {
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprintf("%q…(%d bytes)", s[:40], len(s))
}

func shortList(names []string) string {
	var parts []string
	for _, n := range names {
		parts = append(parts, short(n))
	}
	return "[" + strings.Join(parts, " ") + "]"
}

// hostileState is what the case expects the registry to hold.
type hostileState struct {
	namespace map[string]string              // id → namespace
	attrs     map[string]map[string]string   // id → attributes
	topics    map[string]map[string]struct{} // id → topics
}

func (st *hostileState) subscribers(namespace, topic string) []string {
	var ids []string
	for id, topics := range st.topics {
		if _, ok := topics[topic]; ok && (namespace == "" || st.namespace[id] == namespace) {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// check compares everything the registry says about ids, namespaces and
// topics with st.
func (st *hostileState) check(t *testing.T, r edge.Registry, when string, ids, namespaces, topics []string) {
	t.Helper()
	ctx := regCtx(t)
	for _, id := range ids {
		ns, live := st.namespace[id]
		c, err := r.Get(ctx, id)
		switch {
		case !live:
			wantNotFound(t, when+": Get of removed "+short(id), err)
			continue
		case err != nil:
			t.Fatalf("%s: Get(%s): %v", when, short(id), err)
		case c.ID != id || c.Namespace != ns:
			t.Errorf("%s: Get(%s) = ID %s namespace %s, want namespace %s", when, short(id), short(c.ID), short(c.Namespace), short(ns))
		case !maps.Equal(c.Attrs, st.attrs[id]):
			t.Errorf("%s: Get(%s): Attrs = %q, want %q", when, short(id), c.Attrs, st.attrs[id])
		}
		got, err := r.Topics(ctx, id)
		if err != nil {
			t.Fatalf("%s: Topics(%s): %v", when, short(id), err)
		}
		want := slices.Sorted(func(yield func(string) bool) {
			for topic := range st.topics[id] {
				if !yield(topic) {
					return
				}
			}
		})
		if !slices.Equal(got, want) && (len(got) > 0 || len(want) > 0) {
			t.Errorf("%s: Topics(%s) = %s, want %s", when, short(id), shortList(got), shortList(want))
		}
	}
	for _, topic := range topics {
		for _, ns := range append([]string{""}, namespaces...) {
			var got []string
			err := r.Subscribers(ctx, ns, topic, func(id string) bool {
				got = append(got, id)
				return true
			})
			if err != nil {
				t.Fatalf("%s: Subscribers(%s, %s): %v", when, short(ns), short(topic), err)
			}
			slices.Sort(got)
			if want := st.subscribers(ns, topic); !slices.Equal(got, want) {
				t.Errorf("%s: Subscribers(%s, %s) = %s, want %s", when, short(ns), short(topic), shortList(got), shortList(want))
			}
		}
	}
}

// testHostileNames stores connections whose ids, namespaces and topics are
// hostile names, and checks that each is kept exactly as given, apart from
// its neighbours: each connection has exactly its own topics, Subscribers
// lists exactly the subscribed ids, and removing or unsubscribing one never
// touches a name that differs from it by a separator or an escape.
func testHostileNames(t *testing.T, r edge.Registry) {
	ctx := regCtx(t)
	token := strings.ReplaceAll(edge.NewID(), "-", "")
	ids := hostileNames("conn-" + token)
	topics := hostileNames("topic-" + token)
	namespaces := []string{"/ns-" + token}
	for _, p := range []string{"\x00", ":", "{", "}", "*", "'", "--", `\`, "\n", "\xff"} {
		namespaces = append(namespaces, "/ns-"+token+p, p+"/ns-"+token)
	}
	huge := hostileNames("/ns-huge-" + token)
	namespaces = append(namespaces, huge[len(huge)-2:]...)

	st := &hostileState{
		namespace: make(map[string]string),
		attrs:     make(map[string]map[string]string),
		topics:    make(map[string]map[string]struct{}),
	}
	for i, id := range ids {
		c := conn(namespaces[i%len(namespaces)])
		c.ID = id
		if i%4 == 0 {
			// Attributes are text: control characters and quotes, in
			// valid UTF-8.
			c.Attrs = map[string]string{"user": "ada", "k\x00'\n": "v\x00\r\n\"--;\\ \x7f {x} *?[", "": ""}
			st.attrs[id] = c.Attrs
		}
		if err := r.Add(ctx, c); err != nil {
			t.Fatalf("Add(%s) in namespace %s: %v", short(id), short(c.Namespace), err)
		}
		st.namespace[id] = c.Namespace
		st.topics[id] = make(map[string]struct{})
		// Each connection takes three topics, neighbours of each other's.
		for _, k := range []int{i, i + 1, i + 7} {
			topic := topics[k%len(topics)]
			if err := r.Subscribe(ctx, id, topic); err != nil {
				t.Fatalf("Subscribe(%s, %s): %v", short(id), short(topic), err)
			}
			st.topics[id][topic] = struct{}{}
		}
	}
	st.check(t, r, "after Add and Subscribe", ids, namespaces, topics)

	// Unsubscribe one topic of every other connection, and remove every
	// third connection: their neighbours keep everything.
	for i, id := range ids {
		if i%2 == 0 {
			topic := topics[(i+1)%len(topics)]
			if err := r.Unsubscribe(ctx, id, topic); err != nil {
				t.Fatalf("Unsubscribe(%s, %s): %v", short(id), short(topic), err)
			}
			delete(st.topics[id], topic)
		}
		if i%3 == 1 {
			if err := r.Remove(ctx, id); err != nil {
				t.Fatalf("Remove(%s): %v", short(id), err)
			}
			delete(st.namespace, id)
			delete(st.topics, id)
		}
	}
	st.check(t, r, "after Unsubscribe and Remove", ids, namespaces, topics)
}

// testSeparatorsDoNotJoin subscribes connections in namespaces and topics
// that read the same once joined by a separator ("a:b" and "c", "a" and
// "b:c"): each pair has its own subscribers.
func testSeparatorsDoNotJoin(t *testing.T, r edge.Registry) {
	token := strings.ReplaceAll(edge.NewID(), "-", "")
	type pair struct{ namespace, topic string }
	var pairs []pair
	for _, sep := range []string{":", "%3A", "/", "\x00", "{", "}", "|", " "} {
		whole := []string{"/ns-" + token, "x", "y" + token}
		pairs = append(pairs,
			pair{whole[0] + sep + whole[1], whole[2]},
			pair{whole[0], whole[1] + sep + whole[2]},
			pair{whole[0] + sep + whole[1] + sep, whole[2]},
			pair{whole[0] + sep, sep + whole[1] + sep + whole[2]},
		)
	}
	ids := make([]string, len(pairs))
	for i, p := range pairs {
		c := conn(p.namespace)
		c.ID = fmt.Sprintf("conn-%s-%d", token, i)
		mustAdd(t, r, c)
		mustSubscribe(t, r, c.ID, p.topic)
		ids[i] = c.ID
	}
	for i, p := range pairs {
		got := subscribers(t, r, p.namespace, p.topic)
		if !slices.Equal(got, []string{ids[i]}) {
			t.Errorf("Subscribers(%s, %s) = %s, want only %s", short(p.namespace), short(p.topic), shortList(got), ids[i])
		}
	}
}
