package reconnect

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/edgesync/edgesync/edge"
)

func TestBackoffGrowsWithJitterUpToMax(t *testing.T) {
	b := Backoff{Min: 10 * time.Millisecond, Max: 80 * time.Millisecond}
	steps := []time.Duration{10, 20, 40, 80, 80, 80}
	for i, step := range steps {
		step *= time.Millisecond
		d := b.Next()
		if d < step/2 || d > step {
			t.Fatalf("wait %d = %v, want between %v and %v", i, d, step/2, step)
		}
	}
	b.Reset()
	if d := b.Next(); d > 10*time.Millisecond {
		t.Fatalf("after Reset, wait = %v, want at most Min", d)
	}
}

func TestBackoffWaitStopsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	b := Backoff{Min: time.Hour, Max: time.Hour}
	if b.Wait(ctx) {
		t.Fatal("Wait ran out with a done context")
	}
}

func TestOutageReportsOncePerOutage(t *testing.T) {
	var got []edge.Stage
	o := NewOutage(func(err error, s edge.Stage) { got = append(got, s) })
	lost := errors.New("lost")
	if !o.Lost(lost) || o.Lost(lost) || o.Lost(lost) {
		t.Fatal("only the first loss of an outage is reported")
	}
	if !o.Down() {
		t.Fatal("Down = false during an outage")
	}
	o.Restored()
	if o.Down() || !o.Lost(lost) {
		t.Fatal("a loss after Restored starts a new outage")
	}
	if len(got) != 2 || got[0] != edge.StageSubscribe {
		t.Fatalf("reports = %v, want two at %q", got, edge.StageSubscribe)
	}
}
