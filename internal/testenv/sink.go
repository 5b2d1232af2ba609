package testenv

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgesync/edgesync/edge"
)

// SinkTimeout bounds every wait of a Sink.
const SinkTimeout = 10 * time.Second

// Sink is an edge.Endpoint that records what it is delivered, for tests that
// join members to a Hub. Make one with NewSink or Join.
type Sink struct {
	mu     sync.Mutex
	got    []edge.Data
	notify chan struct{}
}

// NewSink returns an empty Sink.
func NewSink() *Sink { return &Sink{notify: make(chan struct{}, 1)} }

// Deliver implements edge.Endpoint.
func (s *Sink) Deliver(d edge.Data) {
	s.mu.Lock()
	s.got = append(s.got, d)
	s.mu.Unlock()
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// Close implements edge.Endpoint.
func (s *Sink) Close(int, string) error { return nil }

// Len returns how many deliveries the Sink has had.
func (s *Sink) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.got)
}

// Find reports whether a delivery matches.
func (s *Sink) Find(match func(edge.Data) bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.ContainsFunc(s.got, match)
}

// Has reports whether text was delivered.
func (s *Sink) Has(text string) bool {
	return s.Find(func(d edge.Data) bool { return string(d.Bytes) == text })
}

// HasPrefix reports whether something beginning with prefix was delivered.
func (s *Sink) HasPrefix(prefix string) bool {
	return s.Find(func(d edge.Data) bool { return strings.HasPrefix(string(d.Bytes), prefix) })
}

// WaitFor waits until ok holds, checking after every delivery, and fails t
// with what after SinkTimeout.
func (s *Sink) WaitFor(t testing.TB, what string, ok func() bool) {
	t.Helper()
	timer := time.NewTimer(SinkTimeout)
	defer timer.Stop()
	for !ok() {
		select {
		case <-s.notify:
		case <-timer.C:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// WaitText waits until text is delivered.
func (s *Sink) WaitText(t testing.TB, text string) {
	t.Helper()
	s.WaitFor(t, fmt.Sprintf("%q to be delivered", text), func() bool { return s.Has(text) })
}

// Join adds a member subscribed to topic in namespace to hub, delivering to
// a new Sink.
func Join(t testing.TB, hub *edge.Hub, namespace, topic string) *Sink {
	t.Helper()
	s := NewSink()
	m, err := hub.Join(edge.NewID(), namespace, s)
	if err != nil {
		t.Fatalf("Join: %v", err)
	}
	if err := m.Subscribe(topic); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	return s
}

// Publish publishes text on topic in namespace through hub.
func Publish(t testing.TB, hub *edge.Hub, namespace, topic, text string) {
	t.Helper()
	if err := hub.Publish(context.Background(), edge.Message{Namespace: namespace, Topic: topic, Data: edge.Text(text)}); err != nil {
		t.Fatalf("Publish: %v", err)
	}
}

// RelayUntilDelivered publishes probes from hub until one reaches to, which
// proves the relay to its instance works (again), then checks that a
// message published after that arrives.
func RelayUntilDelivered(t testing.TB, hub *edge.Hub, to *Sink, namespace, topic string) {
	t.Helper()
	deadline := time.NewTimer(SinkTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for i := 0; !to.HasPrefix("probe-"); i++ {
		Publish(t, hub, namespace, topic, "probe-"+strconv.Itoa(i))
		select {
		case <-tick.C:
		case <-deadline.C:
			t.Fatalf("no probe delivered within %v", SinkTimeout)
		}
	}
	Publish(t, hub, namespace, topic, "after recovery")
	to.WaitText(t, "after recovery")
}

// Stream publishes from hub, a message a millisecond, until the returned
// function is called or the test ends.
func Stream(t testing.TB, hub *edge.Hub, namespace, topic string) (stop func()) {
	t.Helper()
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			msg := edge.Message{Namespace: namespace, Topic: topic, Data: edge.Text("stream-" + strconv.Itoa(i))}
			if err := hub.Publish(context.Background(), msg); err != nil {
				return
			}
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { close(done); <-stopped }) }
	t.Cleanup(stop)
	return stop
}
