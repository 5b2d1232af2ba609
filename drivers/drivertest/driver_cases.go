package drivertest

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgesync/edgesync/edge"
)

// relay has from publish msg and waits until every instance of to has
// received it.
func relay(t *testing.T, from *instance, msg edge.Message, to ...*instance) {
	t.Helper()
	from.publish(t, msg)
	for _, in := range to {
		got := in.inbox.waitText(t, in.name, string(msg.Data.Bytes))
		if !sameMessage(got, msg) {
			t.Errorf("%s received %s, want %s", in.name, formatMessage(got), formatMessage(msg))
		}
	}
}

func sameMessage(a, b edge.Message) bool {
	return a.Namespace == b.Namespace && a.Topic == b.Topic &&
		a.Data.Binary == b.Data.Binary && bytes.Equal(a.Data.Bytes, b.Data.Bytes)
}

// countText returns how many messages with body text in has received.
func countText(in *instance, text string) int {
	n := 0
	for _, m := range in.inbox.snapshot() {
		if string(m.Data.Bytes) == text {
			n++
		}
	}
	return n
}

// testFanOut publishes in turn from each of three instances. Each message
// must reach both other instances, once, and never its publisher: an
// instance that published message k and then received message k+1 from
// another instance would have received its own echo of k by then.
func (s *driverSuite) testFanOut(t *testing.T) {
	ch := newChannel()
	a := s.newInstance(t, "A", ch)
	b := s.newInstance(t, "B", ch)
	c := s.newInstance(t, "C", ch)
	all := []*instance{a, b, c, a}

	var sent []edge.Message
	for i, from := range all {
		msg := textMessage("/drivertest", "fan-out", fmt.Sprintf("m%d", i+1))
		var others []*instance
		for _, in := range all[:3] {
			if in != from {
				others = append(others, in)
			}
		}
		relay(t, from, msg, others...)
		sent = append(sent, msg)
	}
	for i, msg := range sent[:3] {
		from, text := all[i], string(msg.Data.Bytes)
		if from.inbox.hasText(text) {
			t.Errorf("%s received its own message %q", from.name, text)
		}
		for _, in := range all[:3] {
			if n := countText(in, text); in != from && n != 1 {
				t.Errorf("%s received message %q %d times, want once", in.name, text, n)
			}
		}
	}
}

// testBidirectional relays both ways between two instances.
func (s *driverSuite) testBidirectional(t *testing.T) {
	ch := newChannel()
	a := s.newInstance(t, "A", ch)
	b := s.newInstance(t, "B", ch)
	relay(t, a, textMessage("/drivertest", "both-ways", "a-to-b"), b)
	relay(t, b, textMessage("/drivertest", "both-ways", "b-to-a"), a)
	relay(t, a, textMessage("/drivertest", "both-ways", "a-to-b-again"), b)
}

// testData checks that bodies arrive byte for byte and keep their kind.
func (s *driverSuite) testData(t *testing.T) {
	allBytes := make([]byte, 256)
	for i := range allBytes {
		allBytes[i] = byte(i)
	}
	cases := []struct {
		name string
		data edge.Data
	}{
		{"binary-every-byte-value", edge.Binary(allBytes)},
		{"binary-empty", edge.Binary([]byte{})},
		{"binary-that-looks-like-text", edge.Binary([]byte(`{"hello":"world"}`))},
		{"text-unicode", edge.Text("héllo wörld ✓ 日本語 🚀 \u2028 \x00 tab\tnewline\n")},
		{"text-json", edge.Text(`{"id":"x","msg":{"topic":"t","binary":true,"data":"\"q\" \\ \u00e9"}}`)},
		{"text-that-looks-like-base64", edge.Text("aGVsbG8=")},
		{"text-empty", edge.Text("")},
	}
	ch := newChannel()
	a := s.newInstance(t, "A", ch)
	b := s.newInstance(t, "B", ch)
	prefix := "data-" + edge.NewID() + "/"
	for _, c := range cases {
		a.publish(t, edge.Message{Namespace: "/drivertest", Topic: prefix + c.name, Data: c.data})
	}
	got := waitTopics(t, b, prefix, len(cases))
	for _, c := range cases {
		want := edge.Message{Namespace: "/drivertest", Topic: prefix + c.name, Data: c.data}
		msgs := got[want.Topic]
		if len(msgs) != 1 {
			t.Errorf("%s: received %d times, want once", c.name, len(msgs))
			continue
		}
		if m := msgs[0]; !sameMessage(m, want) {
			t.Errorf("%s: received %s, want %s", c.name, formatMessage(m), formatMessage(want))
		}
	}
}

// waitTopics waits until in has received a message on n distinct topics
// that start with prefix, and returns the messages by topic.
func waitTopics(t *testing.T, in *instance, prefix string, n int) map[string][]edge.Message {
	t.Helper()
	var byTopic map[string][]edge.Message
	in.inbox.waitFor(t, waitTimeout, fmt.Sprintf("%s to receive %d messages", in.name, n), func(msgs []edge.Message) bool {
		byTopic = make(map[string][]edge.Message)
		for _, m := range msgs {
			if len(m.Topic) >= len(prefix) && m.Topic[:len(prefix)] == prefix {
				byTopic[m.Topic] = append(byTopic[m.Topic], m)
			}
		}
		return len(byTopic) >= n
	})
	return byTopic
}

// testAddress checks that namespaces, including the empty namespace, and
// topics arrive as published, control characters, quotes and separators
// included.
func (s *driverSuite) testAddress(t *testing.T) {
	addresses := []struct{ namespace, topic string }{
		{"", "every-namespace"},
		{"/_ws", "chat"},
		{"/rooms/ü ✓", "topic with spaces/ü ✓"},
		{"ns", `a:b.c*?[x]{y}"q"\e%s`},
		{"/ctl\x00\n\r\t\x7f\x1b", "nul\x00 'quote' \"dq\" --;/* */ \\ \u2028\u2029"},
		{"'; DROP TABLE edgesync; --", "$1 ?::text %3A %25 {tag}"},
		{"/drivertest", "0"},
	}
	ch := newChannel()
	a := s.newInstance(t, "A", ch)
	b := s.newInstance(t, "B", ch)
	var sent []edge.Message
	for i, addr := range addresses {
		msg := textMessage(addr.namespace, addr.topic, fmt.Sprintf("address-%d", i))
		a.publish(t, msg)
		sent = append(sent, msg)
	}
	for _, msg := range sent {
		got := b.inbox.waitText(t, "B", string(msg.Data.Bytes))
		if !sameMessage(got, msg) {
			t.Errorf("received %s, want %s", formatMessage(got), formatMessage(msg))
		}
	}
}

// testForeignChannel runs two channels side by side and checks that neither
// sees the other's messages. Each channel's check follows a marker that its
// own instances relayed after the foreign message was published.
func (s *driverSuite) testForeignChannel(t *testing.T) {
	ch1, ch2 := newChannel(), newChannel()
	a1 := s.newInstance(t, "A1", ch1)
	b1 := s.newInstance(t, "B1", ch1)
	a2 := s.newInstance(t, "A2", ch2)
	b2 := s.newInstance(t, "B2", ch2)

	const ns, topic = "/drivertest", "shared-topic"
	foreign := textMessage(ns, topic, "on-channel-2")
	relay(t, a2, foreign, b2)
	local := textMessage(ns, topic, "on-channel-1")
	relay(t, a1, local, b1)
	relay(t, b1, textMessage(ns, topic, "marker-1"), a1)
	relay(t, b2, textMessage(ns, topic, "marker-2"), a2)

	for _, in := range []*instance{a1, b1} {
		if in.inbox.hasText(string(foreign.Data.Bytes)) {
			t.Errorf("%s on channel 1 received a message published on channel 2", in.name)
		}
	}
	for _, in := range []*instance{a2, b2} {
		if in.inbox.hasText(string(local.Data.Bytes)) {
			t.Errorf("%s on channel 2 received a message published on channel 1", in.name)
		}
	}
}

// testPublishBatch checks that every message of a batch reaches every other
// instance.
func (s *driverSuite) testPublishBatch(t *testing.T) {
	ch := newChannel()
	a := s.newInstance(t, "A", ch)
	bd, ok := a.driver.(edge.BatchDriver)
	if !ok {
		t.Skip("the driver is not an edge.BatchDriver")
	}
	b := s.newInstance(t, "B", ch)
	c := s.newInstance(t, "C", ch)

	const n = 100
	prefix := "batch-" + edge.NewID() + "/"
	namespaces := []string{"/drivertest", "", "/other"}
	batch := make([]edge.Message, n)
	for i := range batch {
		msg := edge.Message{Namespace: namespaces[i%len(namespaces)], Topic: fmt.Sprintf("%s%d", prefix, i)}
		if i%2 == 0 {
			msg.Data = edge.Binary([]byte{byte(i), 0, 255 - byte(i)})
		} else {
			msg.Data = edge.Text(fmt.Sprintf("message %d ✓", i))
		}
		batch[i] = msg
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := bd.PublishBatch(ctx, batch); err != nil {
		t.Fatalf("PublishBatch: %v", err)
	}
	one := textMessage("/drivertest", prefix+"one", "batch-of-one")
	if err := bd.PublishBatch(ctx, []edge.Message{one}); err != nil {
		t.Fatalf("PublishBatch of one message: %v", err)
	}
	for _, in := range []*instance{b, c} {
		got := waitTopics(t, in, prefix, n+1)
		for _, want := range append(slices.Clone(batch), one) {
			msgs := got[want.Topic]
			if len(msgs) != 1 {
				t.Errorf("%s received the message on %q %d times, want once", in.name, want.Topic, len(msgs))
			} else if !sameMessage(msgs[0], want) {
				t.Errorf("%s received %s, want %s", in.name, formatMessage(msgs[0]), formatMessage(want))
			}
		}
	}
	if a.inbox.hasText(string(one.Data.Bytes)) {
		t.Errorf("A received its own batch")
	}
}

// testConcurrentHub publishes from many goroutines at once through a real
// Hub and checks that another Hub delivers every message to its subscriber.
func (s *driverSuite) testConcurrentHub(t *testing.T) {
	const (
		goroutines = 8
		perG       = 200
		total      = goroutines * perG
		ns         = "/drivertest"
	)
	ch := newChannel()
	topic := "concurrent-" + edge.NewID()
	hubA, logA := newHub(t, s.newSync, "hub A", ch, 0)
	hubB, logB := newHub(t, s.newSync, "hub B", ch, 0)

	ep := &endpoint{}
	ep.inbox.init()
	member, err := hubB.Join(edge.NewID(), ns, ep)
	if err != nil {
		t.Fatalf("Join: %v", err)
	}
	defer member.Leave()
	if err := member.Subscribe(topic); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}

	ctx := context.Background()
	errc := make(chan error, goroutines)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range perG {
				msg := edge.Message{Namespace: ns, Topic: topic, Data: edge.Text(fmt.Sprintf("%d/%d", g, i))}
				if err := hubA.Publish(ctx, msg); err != nil {
					errc <- fmt.Errorf("goroutine %d, message %d: %w", g, i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Errorf("hub A Publish: %v", err)
	}

	seen := make(map[string]int)
	next := 0
	ep.inbox.waitFor(t, bulkTimeout, fmt.Sprintf("hub B's peer to receive %d messages", total), func(msgs []edge.Message) bool {
		for _, m := range msgs[next:] {
			seen[string(m.Data.Bytes)]++
		}
		next = len(msgs)
		return len(seen) >= total
	})
	for body, n := range seen {
		if n != 1 {
			t.Errorf("message %q was delivered %d times, want once", body, n)
		}
	}
	var missing []string
	for g := range goroutines {
		for i := range perG {
			if body := fmt.Sprintf("%d/%d", g, i); seen[body] == 0 {
				missing = append(missing, body)
			}
		}
	}
	if len(missing) > 0 {
		t.Errorf("%d messages were never delivered, among them %q", len(missing), missing[:min(len(missing), 10)])
	}
	if t.Failed() {
		t.Logf("hub A: %+v; hub B: %+v", hubA.Stats(), hubB.Stats())
		logA.dump(t, "hub A")
		logB.dump(t, "hub B")
	}
}

// testPublishOnly checks what a publish-only instance relies on: a driver
// that is never subscribed, built directly and then by a publish-only Hub,
// relays out what it publishes, one message at a time and in batches, to
// every subscribed instance of the channel; nothing published by the others
// reaches it; and closing it releases every goroutine it started.
func (s *driverSuite) testPublishOnly(t *testing.T) {
	const ns = "/drivertest"
	before := runtime.NumGoroutine()
	ch := newChannel()
	a := s.newInstance(t, "A", ch)
	b := s.newInstance(t, "B", ch)

	// A driver built and never subscribed.
	p := s.newPublisher(t, "publisher", ch)
	relay(t, p, textMessage(ns, "publish-only", "first"), a, b)
	relay(t, p, textMessage(ns, "publish-only", "second"), a, b)
	// Larger than some backplanes carry inline (a Postgres NOTIFY).
	relay(t, p, textMessage(ns, "publish-only", "large-"+strings.Repeat("x", 20_000)), a, b)
	if bd, ok := p.driver.(edge.BatchDriver); ok {
		prefix := "publish-only-batch-" + edge.NewID() + "/"
		batch := make([]edge.Message, 20)
		for i := range batch {
			batch[i] = textMessage(ns, fmt.Sprintf("%s%d", prefix, i), "batch")
		}
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		if err := bd.PublishBatch(ctx, batch); err != nil {
			t.Fatalf("publisher: PublishBatch: %v", err)
		}
		for _, in := range []*instance{a, b} {
			got := waitTopics(t, in, prefix, len(batch))
			for _, want := range batch {
				if msgs := got[want.Topic]; len(msgs) != 1 || !sameMessage(msgs[0], want) {
					t.Errorf("%s received %d messages on %q, want %s once", in.name, len(msgs), want.Topic, formatMessage(want))
				}
			}
		}
	}

	// A publish-only Hub, with a peer of its own as a witness.
	log := &errorLog{}
	hub, err := edge.New(edge.Options{Sync: s.newSync(t, ch), PublishOnly: true, OnError: log.onError})
	if err != nil {
		t.Fatalf("publish-only hub: edge.New: %v", err)
	}
	closeHub := sync.OnceValue(hub.Close)
	t.Cleanup(func() { closeHub() })
	witness := &endpoint{}
	witness.inbox.init()
	member, err := hub.Join(edge.NewID(), ns, witness)
	if err != nil {
		t.Fatalf("Join: %v", err)
	}
	topic := "publish-only-hub-" + edge.NewID()
	if err := member.Subscribe(topic); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	const n = 50
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	sent := make(map[string]bool)
	for i := range n {
		msg := textMessage(ns, topic, fmt.Sprintf("hub-%d", i))
		if err := hub.Publish(ctx, msg); err != nil {
			t.Fatalf("publish-only hub: Publish %d: %v", i, err)
		}
		sent[string(msg.Data.Bytes)] = true
	}
	if err := hub.Flush(ctx); err != nil {
		t.Fatalf("publish-only hub: Flush: %v", err)
	}
	for _, in := range []*instance{a, b} {
		seen := make(map[string]int)
		in.inbox.waitFor(t, waitTimeout, fmt.Sprintf("%s to receive the hub's %d messages", in.name, n), func(msgs []edge.Message) bool {
			clear(seen)
			for _, m := range msgs {
				if m.Topic == topic {
					seen[string(m.Data.Bytes)]++
				}
			}
			return len(seen) >= n
		})
		for body, k := range seen {
			if !sent[body] || k != 1 {
				t.Errorf("%s received %q %d times, want it once and only if the hub published it", in.name, body, k)
			}
		}
	}

	// What the others publish never reaches the publish-only instances: by
	// the time both subscribed instances have each other's messages, the
	// backplane has carried them.
	fromA := textMessage(ns, topic, "from-A")
	relay(t, a, fromA, b)
	fromB := textMessage(ns, topic, "from-B")
	relay(t, b, fromB, a)
	relay(t, p, textMessage(ns, topic, "marker"), a, b)
	if got := len(witness.inbox.snapshot()); got != n {
		t.Errorf("the publish-only hub's peer received %d messages, want its hub's own %d:\n%s", got, n, describe(witness.inbox.snapshot()))
	}
	if st := hub.Stats(); st.Received != 0 || st.Relayed != n {
		t.Errorf("the publish-only hub received %d messages from the backplane and relayed %d, want none and %d", st.Received, st.Relayed, n)
	}
	if log.count() > 0 {
		t.Errorf("the publish-only hub reported %d errors", log.count())
		log.dump(t, "publish-only hub")
	}

	// Closing releases everything; Publish fails afterwards.
	member.Leave()
	if err := closeHub(); err != nil {
		t.Errorf("publish-only hub: Close: %v", err)
	}
	for _, in := range []*instance{p, a, b} {
		in.cancel()
		if err := in.close(); err != nil {
			t.Errorf("%s: Close: %v", in.name, err)
		}
	}
	waitGoroutines(t, before)
	if err := protect(p.driver.Close); isPanic(err) {
		t.Errorf("publisher: second Close: %v", err)
	}
	err = protect(func() error { return p.driver.Publish(ctx, textMessage(ns, topic, "after-close")) })
	switch {
	case isPanic(err):
		t.Errorf("publisher: Publish after Close: %v", err)
	case err == nil:
		t.Errorf("publisher: Publish after Close returned nil, want an error")
	}
}

// endpoint is an edge.Endpoint that records what it is given.
type endpoint struct{ inbox inbox }

func (e *endpoint) Deliver(d edge.Data) { e.inbox.add(edge.Message{Data: d}) }

func (e *endpoint) Close(code int, reason string) error { return nil }

// errorLog records what a Hub reports to OnError.
type errorLog struct {
	mu   sync.Mutex
	errs []string
}

func (l *errorLog) onError(err error, info edge.ErrorInfo) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.errs = append(l.errs, fmt.Sprintf("%s: %v", info.Stage, err))
}

func (l *errorLog) dump(tb testing.TB, name string) {
	tb.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.errs {
		tb.Logf("%s reported %s", name, e)
	}
}

// count returns how many errors were reported.
func (l *errorLog) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.errs)
}

// newHub starts a Hub on channel with the Sync that newSync returns and an
// outbound queue of queueSize (0 for the default), closed when tb ends.
func newHub(tb testing.TB, newSync func(tb testing.TB, channel string) edge.Sync, name, channel string, queueSize int) (*edge.Hub, *errorLog) {
	tb.Helper()
	log := &errorLog{}
	hub, err := edge.New(edge.Options{Sync: newSync(tb, channel), OnError: log.onError, QueueSize: queueSize})
	if err != nil {
		tb.Fatalf("%s: edge.New: %v", name, err)
	}
	tb.Cleanup(func() {
		if err := hub.Close(); err != nil {
			tb.Errorf("%s: Close: %v", name, err)
		}
	})
	return hub, log
}

// testNoDeliveryAfterClose closes an instance while another publishes to it
// without pause, and checks that deliver is never called once Close has
// returned.
func (s *driverSuite) testNoDeliveryAfterClose(t *testing.T) {
	ch := newChannel()
	a := s.newInstance(t, "A", ch)
	b := s.newInstance(t, "B", ch)
	c := s.newInstance(t, "C", ch)

	const maxStream = 100_000
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), bulkTimeout)
		defer cancel()
		for i := 0; i < maxStream; i++ {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			msg := edge.Message{Namespace: "/drivertest", Topic: "stream", Data: edge.Text(fmt.Sprintf("stream-%d", i))}
			if err := a.driver.Publish(ctx, msg); err != nil {
				done <- fmt.Errorf("Publish %d: %w", i, err)
				return
			}
		}
		<-stop
		done <- nil
	}()
	stopped := false
	stopStream := func() error {
		if stopped {
			return nil
		}
		stopped = true
		close(stop)
		return <-done
	}
	defer stopStream()

	b.inbox.waitFor(t, waitTimeout, "B to receive the stream", func(msgs []edge.Message) bool { return len(msgs) > 0 })
	if err := b.close(); err != nil {
		t.Errorf("B: Close: %v", err)
	}
	n := len(c.inbox.snapshot())
	c.inbox.waitFor(t, waitTimeout, "C to receive more of the stream", func(msgs []edge.Message) bool { return len(msgs) >= n+20 })
	if err := stopStream(); err != nil {
		t.Fatalf("A: %v", err)
	}
	marker := textMessage("/drivertest", "stream", "marker")
	relay(t, a, marker, c)
	if n := b.late.Load(); n > 0 {
		t.Errorf("B's deliver was called %d times after Close returned", n)
	}
}

// testCloseReleases checks that closed drivers leave no goroutine behind,
// that Close twice is harmless, and that Publish after Close is an error.
func (s *driverSuite) testCloseReleases(t *testing.T) {
	before := runtime.NumGoroutine()
	ch := newChannel()
	a := s.newInstance(t, "A", ch)
	b := s.newInstance(t, "B", ch)
	relay(t, a, textMessage("/drivertest", "close", "a-to-b"), b)
	relay(t, b, textMessage("/drivertest", "close", "b-to-a"), a)

	for _, in := range []*instance{a, b} {
		// The Hub's order: cancel the Subscribe context, then Close.
		in.cancel()
		if err := in.close(); err != nil {
			t.Errorf("%s: Close: %v", in.name, err)
		}
	}
	waitGoroutines(t, before)

	for _, in := range []*instance{a, b} {
		if err := protect(in.driver.Close); isPanic(err) {
			t.Errorf("%s: second Close: %v", in.name, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	msg := textMessage("/drivertest", "close", "after-close")
	err := protect(func() error { return a.driver.Publish(ctx, msg) })
	switch {
	case isPanic(err):
		t.Errorf("Publish after Close: %v", err)
	case err == nil:
		t.Errorf("Publish after Close returned nil, want an error")
	}
	if bd, ok := a.driver.(edge.BatchDriver); ok {
		err := protect(func() error { return bd.PublishBatch(ctx, []edge.Message{msg, msg}) })
		switch {
		case isPanic(err):
			t.Errorf("PublishBatch after Close: %v", err)
		case err == nil:
			t.Errorf("PublishBatch after Close returned nil, want an error")
		}
	}
}

// panicError is a panic recovered by protect.
type panicError struct{ value any }

func (p panicError) Error() string { return fmt.Sprintf("panicked: %v", p.value) }

func isPanic(err error) bool {
	_, ok := err.(panicError)
	return ok
}

// protect calls fn, turning a panic into a panicError.
func protect(fn func() error) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = panicError{v}
		}
	}()
	return fn()
}

// waitGoroutines waits until no more goroutines run than before, failing t
// with a dump of every goroutine when they do not end in time.
func waitGoroutines(t *testing.T, before int) {
	t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		n := runtime.NumGoroutine()
		if n <= before {
			return
		}
		select {
		case <-tick.C:
		case <-deadline.C:
			t.Errorf("%d goroutines still run %v after Close, %d ran before the drivers were built:\n%s",
				n, waitTimeout, before, goroutineDump())
			return
		}
	}
}

func goroutineDump() []byte {
	buf := make([]byte, 1<<16)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return buf[:n]
		}
		buf = make([]byte, 2*len(buf))
	}
}

// testInboundCounted relays text and binary messages from A to B and checks
// that B's driver counted each of them through Instance.Inbound, at no less
// than the size of its body: the counters of edge.Stats that show the
// traffic an instance receives from the backplane. A driver may count more
// (its own echo, liveness probes), never less.
func (s *driverSuite) testInboundCounted(t *testing.T) {
	ch := newChannel()
	a := s.newInstance(t, "A", ch)
	b := s.newInstance(t, "B", ch)
	msgs := []edge.Message{
		textMessage("/drivertest", "inbound", "short"),
		textMessage("/drivertest", "inbound", strings.Repeat("long", 500)),
		{Namespace: "/drivertest", Topic: "inbound", Data: edge.Binary([]byte("binary-" + edge.NewID()))},
	}
	var bodies int64
	for _, msg := range msgs {
		relay(t, a, msg, b)
		bodies += int64(len(msg.Data.Bytes))
	}
	if n := b.inboundMsgs.Load(); n < int64(len(msgs)) {
		t.Errorf("B counted %d inbound payloads, want at least the %d messages it received", n, len(msgs))
	}
	if n := b.inboundBytes.Load(); n < bodies {
		t.Errorf("B counted %d inbound bytes, want at least the %d bytes of the bodies it received", n, bodies)
	}
}
