package memsync_test

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgesync/edgesync/drivers/drivertest"
	"github.com/edgesync/edgesync/drivers/memsync"
	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/internal/testenv"
)

func TestDriverConformance(t *testing.T) {
	drivertest.RunDriverTests(t, busSync())
}

func TestRoutedDriverConformance(t *testing.T) {
	var bus memsync.Bus
	routed := func(_ testing.TB, channel string) edge.Sync {
		return memsync.New(memsync.Options{Bus: &bus, Channel: channel, Routed: true})
	}
	drivertest.RunRoutedDriverTests(t, routed)
}

// busSync returns a function for drivertest that builds the Sync of one more
// instance of a channel, all on one Bus.
func busSync() func(tb testing.TB, channel string) edge.Sync {
	var bus memsync.Bus
	return func(_ testing.TB, channel string) edge.Sync {
		return memsync.New(memsync.Options{Bus: &bus, Channel: channel})
	}
}

func TestRegistryConformance(t *testing.T) {
	t.Run("FreshRegistries", func(t *testing.T) {
		drivertest.RunRegistryTests(t, func(tb testing.TB) edge.Registry {
			return memsync.NewRegistry(memsync.RegistryOptions{})
		})
	})
	t.Run("SharedRegistry", func(t *testing.T) {
		shared := memsync.NewRegistry(memsync.RegistryOptions{})
		drivertest.RunRegistryTests(t, func(tb testing.TB) edge.Registry { return shared })
	})
}

func TestOptionsAreValidated(t *testing.T) {
	var bus memsync.Bus
	for _, tc := range []struct {
		name string
		opts memsync.Options
		want string
	}{
		{"no bus", memsync.Options{Channel: "c"}, "Options.Bus is nil"},
		{"no channel", memsync.Options{Bus: &bus}, "Options.Channel is empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hub, err := edge.New(edge.Options{Sync: memsync.New(tc.opts)})
			if err == nil {
				hub.Close()
				t.Fatal("edge.New succeeded, want an error")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("edge.New: %v, want an error saying %q", err, tc.want)
			}
		})
	}
	t.Run("no instance id", func(t *testing.T) {
		_, err := memsync.New(memsync.Options{Bus: &bus, Channel: "c"})(edge.Instance{Report: func(error, edge.Stage) {}})
		if err == nil {
			t.Error("Sync accepted an Instance without ID")
		}
	})
}

// instance is a driver built directly, with what it receives and reports
// recorded.
type instance struct {
	driver edge.Driver
	log    *testenv.ErrorLog
	mu     sync.Mutex
	got    []string
}

func newInstance(t *testing.T, opts memsync.Options) *instance {
	t.Helper()
	in := &instance{log: testenv.NewErrorLog()}
	d, err := memsync.New(opts)(edge.Instance{ID: edge.NewID(), Report: in.log.Report})
	if err != nil {
		t.Fatalf("Sync: %v", err)
	}
	in.driver = d
	t.Cleanup(func() { d.Close() })
	if err := d.Subscribe(context.Background(), func(m edge.Message) {
		in.mu.Lock()
		in.got = append(in.got, m.Data.String())
		in.mu.Unlock()
	}); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	return in
}

func (in *instance) received() []string {
	in.mu.Lock()
	defer in.mu.Unlock()
	return slices.Clone(in.got)
}

func publish(t *testing.T, d edge.Driver, text string) {
	t.Helper()
	if err := d.Publish(context.Background(), edge.Message{Namespace: "/_ws", Topic: "news", Data: edge.Text(text)}); err != nil {
		t.Fatalf("Publish: %v", err)
	}
}

// TestBusesAndChannelsDoNotBridge relies on Publish delivering before it
// returns: what an instance has not received by then, it never will.
func TestBusesAndChannelsDoNotBridge(t *testing.T) {
	var bus1, bus2 memsync.Bus
	origin := newInstance(t, memsync.Options{Bus: &bus1, Channel: "c"})
	peer := newInstance(t, memsync.Options{Bus: &bus1, Channel: "c"})
	otherBus := newInstance(t, memsync.Options{Bus: &bus2, Channel: "c"})
	otherChannel := newInstance(t, memsync.Options{Bus: &bus1, Channel: "d"})

	publish(t, origin.driver, "hello")
	if got := peer.received(); !slices.Equal(got, []string{"hello"}) {
		t.Errorf("the peer on the same Bus and channel received %q, want [hello]", got)
	}
	if got := origin.received(); len(got) != 0 {
		t.Errorf("the publisher received %q, want nothing", got)
	}
	if got := otherBus.received(); len(got) != 0 {
		t.Errorf("an instance on another Bus received %q", got)
	}
	if got := otherChannel.received(); len(got) != 0 {
		t.Errorf("an instance on another channel received %q", got)
	}
	for _, in := range []*instance{origin, peer, otherBus, otherChannel} {
		if in.log.Count(testenv.AnyStage) > 0 {
			t.Errorf("reported: %v", in.log)
		}
	}
}

func TestDriverErrors(t *testing.T) {
	var bus memsync.Bus
	in := newInstance(t, memsync.Options{Bus: &bus, Channel: "c"})
	if err := in.driver.Subscribe(context.Background(), func(edge.Message) {}); err == nil {
		t.Error("a second Subscribe succeeded")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := in.driver.Publish(ctx, edge.Message{Topic: "t"}); !errors.Is(err, context.Canceled) {
		t.Errorf("Publish with a canceled context: %v, want context.Canceled", err)
	}
	if err := in.driver.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := in.driver.Publish(context.Background(), edge.Message{Topic: "t"}); !errors.Is(err, edge.ErrClosed) {
		t.Errorf("Publish after Close: %v, want edge.ErrClosed", err)
	}
	bd := in.driver.(edge.BatchDriver)
	if err := bd.PublishBatch(context.Background(), []edge.Message{{Topic: "t"}}); !errors.Is(err, edge.ErrClosed) {
		t.Errorf("PublishBatch after Close: %v, want edge.ErrClosed", err)
	}
}

// TestPanickingInstanceIsIsolated checks that an instance whose deliver
// panics hurts neither the publisher nor the other instances.
func TestPanickingInstanceIsIsolated(t *testing.T) {
	var bus memsync.Bus
	opts := memsync.Options{Bus: &bus, Channel: "c"}
	origin := newInstance(t, opts)
	reported := testenv.NewErrorLog()
	bad, err := memsync.New(opts)(edge.Instance{ID: edge.NewID(), Report: reported.Report})
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	if err := bad.Subscribe(context.Background(), func(edge.Message) { panic("boom") }); err != nil {
		t.Fatal(err)
	}
	good := newInstance(t, opts)

	publish(t, origin.driver, "one")
	publish(t, origin.driver, "two")
	if got := good.received(); !slices.Equal(got, []string{"one", "two"}) {
		t.Errorf("the other instance received %q, want [one two]", got)
	}
	if reported.Count(testenv.AnyStage) != 2 || reported.Count(edge.StageDelivery) != 2 {
		t.Errorf("the panicking instance reported %v, want two at stage delivery", reported)
	}
	for _, err := range reported.Errors(testenv.AnyStage) {
		var pe *edge.PanicError
		if !errors.As(err, &pe) {
			t.Errorf("reported %v, want an *edge.PanicError", err)
		}
	}
}

func TestRegistryDefaultTTL(t *testing.T) {
	ctx := context.Background()
	start := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	now := start
	clock := func() time.Time { return now }
	for _, tc := range []struct {
		name string
		ttl  time.Duration
		want time.Duration
	}{
		{"default", 0, 2 * time.Hour},
		{"custom", 5 * time.Minute, 5 * time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now = start
			r := memsync.NewRegistry(memsync.RegistryOptions{TTL: tc.ttl, Now: clock})
			if err := r.Add(ctx, edge.Conn{ID: "c1", Namespace: "/_ws", ConnectedAt: start}); err != nil {
				t.Fatal(err)
			}
			if err := r.Subscribe(ctx, "c1", "news"); err != nil {
				t.Fatal(err)
			}
			c, err := r.Get(ctx, "c1")
			if err != nil {
				t.Fatal(err)
			}
			if want := start.Add(tc.want); !c.ExpiresAt.Equal(want) {
				t.Errorf("ExpiresAt = %v, want %v", c.ExpiresAt, want)
			}

			now = start.Add(tc.want - time.Nanosecond)
			if _, err := r.Get(ctx, "c1"); err != nil {
				t.Errorf("Get just before expiry: %v", err)
			}
			if got := subscribers(t, r, "/_ws", "news"); !slices.Equal(got, []string{"c1"}) {
				t.Errorf("Subscribers just before expiry = %q, want [c1]", got)
			}

			now = start.Add(tc.want)
			if got := subscribers(t, r, "", "news"); len(got) != 0 {
				t.Errorf("Subscribers at expiry = %q, want none", got)
			}
			if _, err := r.Get(ctx, "c1"); !errors.Is(err, edge.ErrNotFound) {
				t.Errorf("Get at expiry: %v, want edge.ErrNotFound", err)
			}
			if _, err := r.Topics(ctx, "c1"); !errors.Is(err, edge.ErrNotFound) {
				t.Errorf("Topics at expiry: %v, want edge.ErrNotFound", err)
			}
		})
	}
}

func subscribers(t *testing.T, r *memsync.Registry, namespace, topic string) []string {
	t.Helper()
	var ids []string
	if err := r.Subscribers(context.Background(), namespace, topic, func(id string) bool {
		ids = append(ids, id)
		return true
	}); err != nil {
		t.Fatal(err)
	}
	slices.Sort(ids)
	return ids
}

func TestRegistryKeepsItsOwnAttrs(t *testing.T) {
	ctx := context.Background()
	r := memsync.NewRegistry(memsync.RegistryOptions{})
	attrs := map[string]string{"user": "ada"}
	if err := r.Add(ctx, edge.Conn{ID: "c1", Namespace: "/_ws", Attrs: attrs}); err != nil {
		t.Fatal(err)
	}
	attrs["user"] = "mallory"
	c, err := r.Get(ctx, "c1")
	if err != nil {
		t.Fatal(err)
	}
	c.Attrs["user"] = "eve"
	c, _ = r.Get(ctx, "c1")
	if want := map[string]string{"user": "ada"}; !maps.Equal(c.Attrs, want) {
		t.Errorf("Attrs = %q, want %q", c.Attrs, want)
	}
}

func TestRegistryErrors(t *testing.T) {
	ctx := context.Background()
	r := memsync.NewRegistry(memsync.RegistryOptions{})
	if err := r.Add(ctx, edge.Conn{Namespace: "/_ws"}); err == nil {
		t.Error("Add of a connection without ID succeeded")
	}
	if err := r.Add(ctx, edge.Conn{ID: "c1", Namespace: "/_ws"}); err != nil {
		t.Fatal(err)
	}
	if err := r.Subscribe(ctx, "c1", ""); !errors.Is(err, edge.ErrInvalidTopic) {
		t.Errorf("Subscribe to an empty topic: %v, want edge.ErrInvalidTopic", err)
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := r.Get(canceled, "c1"); !errors.Is(err, context.Canceled) {
		t.Errorf("Get with a canceled context: %v, want context.Canceled", err)
	}
}

// TestSubscribersCallbackMayUseTheRegistry removes each subscriber from
// inside the callback, as a Gateway does on 410 Gone.
func TestSubscribersCallbackMayUseTheRegistry(t *testing.T) {
	ctx := context.Background()
	r := memsync.NewRegistry(memsync.RegistryOptions{})
	for _, id := range []string{"c1", "c2", "c3"} {
		if err := r.Add(ctx, edge.Conn{ID: id, Namespace: "/_ws"}); err != nil {
			t.Fatal(err)
		}
		if err := r.Subscribe(ctx, id, "news"); err != nil {
			t.Fatal(err)
		}
	}
	err := r.Subscribers(ctx, "/_ws", "news", func(id string) bool {
		if err := r.Remove(ctx, id); err != nil {
			t.Errorf("Remove(%q): %v", id, err)
		}
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := subscribers(t, r, "/_ws", "news"); len(got) != 0 {
		t.Errorf("Subscribers after removing each = %q, want none", got)
	}
}
