package drivertest_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/edgesync/edgesync/drivers/drivertest"
	"github.com/edgesync/edgesync/drivers/memsync"
	"github.com/edgesync/edgesync/edge"
)

// TestSuiteCatchesBrokenImplementations runs cases of the suite, in a process
// of their own, against implementations that each break one rule, and checks
// that the cases guarding that rule fail. (memsync, unchanged, passes them
// all: see its tests.)
func TestSuiteCatchesBrokenImplementations(t *testing.T) {
	for _, tc := range []struct {
		broken string
		fails  []string // cases that must fail
	}{
		{"echo", []string{"PublishReachesEveryOtherInstanceButNotItself"}},
		{"binary-as-text", []string{"DataSurvives"}},
		{"bridge", []string{"ForeignChannelDoesNotBridge"}},
		{"lossy-batch", []string{"PublishBatchDeliversEveryMessage"}},
		{"leak", []string{"CloseReleasesEverything"}},
		{"publish-needs-subscribe", []string{"PublishOnlyInstanceRelaysOut"}},
		{"open-after-close", []string{"CloseReleasesEverything"}},
		{"nil-report", []string{"RelayIsBidirectional", "DataSurvives"}},
		{"uncounted", []string{"InboundCountsWhatArrives"}},
		{"registry-no-stop", []string{"SubscribersStopEarly"}},
		{"registry-no-expiry", []string{"ExpiredConnectionIsGone"}},
		{"registry-keeps-subscriptions", []string{"RemoveDropsEverySubscription"}},
		{"registry-mangles-names", []string{"HostileNamesStayApart"}},
		{"registry-joins-keys", []string{"SeparatorsDoNotJoinNames"}},
	} {
		t.Run(tc.broken, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
			defer cancel()
			run := "^TestBroken$/^(" + strings.Join(tc.fails, "|") + ")$"
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run="+run, "-test.v", "-test.count=1")
			cmd.Env = append(os.Environ(), drivertest.BrokenEnv+"="+tc.broken)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("the suite passed:\n%s", out)
			}
			for _, name := range tc.fails {
				if !strings.Contains(string(out), "--- FAIL: TestBroken/"+name+" ") {
					t.Errorf("case %s did not fail:\n%s", name, out)
				}
			}
		})
	}
}

// TestBroken runs the suite against the implementation that
// TestSuiteCatchesBrokenImplementations names. It is skipped otherwise.
func TestBroken(t *testing.T) {
	broken := os.Getenv(drivertest.BrokenEnv)
	if broken == "" {
		t.Skip("run by TestSuiteCatchesBrokenImplementations")
	}
	if reg, ok := strings.CutPrefix(broken, "registry-"); ok {
		drivertest.RunRegistryTests(t, func(tb testing.TB) edge.Registry {
			return &brokenRegistry{Registry: memsync.NewRegistry(memsync.RegistryOptions{}), broken: reg}
		})
		return
	}
	var bus memsync.Bus
	drivertest.RunDriverTests(t, func(tb testing.TB, channel string) edge.Sync {
		if broken == "bridge" {
			channel = "every channel"
		}
		sync := memsync.New(memsync.Options{Bus: &bus, Channel: channel})
		return func(inst edge.Instance) (edge.Driver, error) {
			if broken == "uncounted" {
				inst.Inbound = nil
			}
			d, err := sync(inst)
			if err != nil {
				return nil, err
			}
			return &brokenDriver{BatchDriver: d.(edge.BatchDriver), broken: broken, inst: inst}, nil
		}
	})
}

// TestBenchmarks runs the benchmarks on memsync and checks that they report
// their metrics.
func TestBenchmarks(t *testing.T) {
	var bus memsync.Bus
	newSync := func(_ testing.TB, channel string) edge.Sync {
		return memsync.New(memsync.Options{Bus: &bus, Channel: channel})
	}
	relay := testing.Benchmark(func(b *testing.B) { drivertest.BenchmarkRelay(b, newSync) })
	if relay.N == 0 || relay.Extra["msgs/s"] <= 0 {
		t.Errorf("BenchmarkRelay: %d messages, metrics %v; want msgs/s", relay.N, relay.Extra)
	}
	latency := testing.Benchmark(func(b *testing.B) { drivertest.BenchmarkLatency(b, newSync, 20_000) })
	for _, m := range []string{"p50-µs", "p99-µs", "max-µs"} {
		if _, ok := latency.Extra[m]; latency.N == 0 || !ok {
			t.Errorf("BenchmarkLatency: %d messages, metrics %v; want %s", latency.N, latency.Extra, m)
		}
	}
}

// brokenDriver is memsync with one rule broken.
type brokenDriver struct {
	edge.BatchDriver
	broken  string
	inst    edge.Instance
	deliver func(edge.Message)
}

func (d *brokenDriver) Subscribe(ctx context.Context, deliver func(edge.Message)) error {
	d.deliver = deliver
	switch d.broken {
	case "leak":
		go func() { select {} }()
	case "nil-report":
		d.inst.Report(nil, edge.StageSubscribe)
	case "binary-as-text":
		deliver = func(m edge.Message) {
			m.Data.Binary = false
			d.deliver(m)
		}
	}
	return d.BatchDriver.Subscribe(ctx, deliver)
}

func (d *brokenDriver) Publish(ctx context.Context, msg edge.Message) error {
	if d.broken == "publish-needs-subscribe" && d.deliver == nil {
		return errors.New("not subscribed")
	}
	if d.broken == "echo" {
		d.deliver(msg)
	}
	if d.broken == "open-after-close" {
		_ = d.BatchDriver.Publish(ctx, msg)
		return nil
	}
	return d.BatchDriver.Publish(ctx, msg)
}

func (d *brokenDriver) PublishBatch(ctx context.Context, msgs []edge.Message) error {
	if d.broken == "publish-needs-subscribe" && d.deliver == nil {
		return errors.New("not subscribed")
	}
	if d.broken == "lossy-batch" && len(msgs) > 1 {
		msgs = msgs[:len(msgs)-1]
	}
	return d.BatchDriver.PublishBatch(ctx, msgs)
}

// brokenRegistry is the memsync Registry with one rule broken.
type brokenRegistry struct {
	*memsync.Registry
	broken string
}

func (r *brokenRegistry) Add(ctx context.Context, c edge.Conn) error {
	if r.broken == "no-expiry" {
		c.ExpiresAt = time.Now().Add(time.Hour)
	}
	c.ID, c.Namespace = r.mangle(c.ID), r.mangle(c.Namespace)
	return r.Registry.Add(ctx, c)
}

// mangle is what a naive key scheme does to a name: it drops NUL bytes and
// cuts it at 1 KiB.
func (r *brokenRegistry) mangle(name string) string {
	if r.broken != "mangles-names" {
		return name
	}
	name = strings.ReplaceAll(name, "\x00", "")
	return name[:min(len(name), 1024)]
}

func (r *brokenRegistry) Get(ctx context.Context, id string) (edge.Conn, error) {
	return r.Registry.Get(ctx, r.mangle(id))
}

func (r *brokenRegistry) Topics(ctx context.Context, id string) ([]string, error) {
	return r.Registry.Topics(ctx, r.mangle(id))
}

func (r *brokenRegistry) Unsubscribe(ctx context.Context, id, topic string) error {
	return r.Registry.Unsubscribe(ctx, r.mangle(id), r.mangle(topic))
}

// Subscribe, when the registry joins keys, subscribes to namespace:topic, as
// a key scheme that does not escape its separator.
func (r *brokenRegistry) Subscribe(ctx context.Context, id, topic string) error {
	if r.broken == "joins-keys" {
		c, err := r.Registry.Get(ctx, id)
		if err != nil {
			return err
		}
		return r.Registry.Subscribe(ctx, id, c.Namespace+":"+topic)
	}
	return r.Registry.Subscribe(ctx, r.mangle(id), r.mangle(topic))
}

func (r *brokenRegistry) Remove(ctx context.Context, id string) error {
	if r.broken == "keeps-subscriptions" {
		topics, _ := r.Topics(ctx, id)
		c, err := r.Get(ctx, id)
		if err != nil {
			return nil
		}
		if err := r.Registry.Remove(ctx, id); err != nil {
			return err
		}
		_ = r.Registry.Add(ctx, c)
		for _, topic := range topics {
			_ = r.Registry.Subscribe(ctx, id, topic)
		}
		return nil
	}
	return r.Registry.Remove(ctx, r.mangle(id))
}

func (r *brokenRegistry) Subscribers(ctx context.Context, namespace, topic string, each func(string) bool) error {
	if r.broken == "joins-keys" && namespace != "" {
		return r.Registry.Subscribers(ctx, "", namespace+":"+topic, each)
	}
	namespace, topic = r.mangle(namespace), r.mangle(topic)
	if r.broken == "no-stop" {
		return r.Registry.Subscribers(ctx, namespace, topic, func(id string) bool {
			each(id)
			return true
		})
	}
	return r.Registry.Subscribers(ctx, namespace, topic, each)
}
