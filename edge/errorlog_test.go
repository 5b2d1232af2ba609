package edge_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/internal/testenv"
)

// lineLog is a slog.Handler that keeps every line and signals each one.
type lineLog struct {
	mu    sync.Mutex
	lines []map[string]any
	added chan struct{}
}

func newLineLog() *lineLog { return &lineLog{added: make(chan struct{}, 1<<16)} }

func (l *lineLog) Enabled(context.Context, slog.Level) bool { return true }
func (l *lineLog) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *lineLog) WithGroup(string) slog.Handler            { return l }

func (l *lineLog) Handle(_ context.Context, r slog.Record) error {
	line := map[string]any{"msg": r.Message}
	r.Attrs(func(a slog.Attr) bool {
		line[a.Key] = a.Value.Any()
		return true
	})
	l.mu.Lock()
	l.lines = append(l.lines, line)
	l.mu.Unlock()
	l.added <- struct{}{}
	return nil
}

func (l *lineLog) all() []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]map[string]any(nil), l.lines...)
}

func TestErrorLogHoldsBackRepeatsAndCountsThem(t *testing.T) {
	lines := newLineLog()
	log := &edge.ErrorLog{Logger: slog.New(lines), Interval: time.Hour}
	for i := range 10_000 {
		// The details differ; the kind (the innermost error) does not.
		log.Report(fmt.Errorf("message %d: %w", i, edge.ErrQueueFull), edge.ErrorInfo{Stage: edge.StagePublish})
	}
	log.Report(errors.New("another kind"), edge.ErrorInfo{Stage: edge.StagePublish})
	log.Report(edge.ErrQueueFull, edge.ErrorInfo{Stage: edge.StageDelivery}) // another stage
	if got := len(lines.all()); got != 3 {
		t.Fatalf("%d lines for 3 kinds of error, want 3: %v", got, lines.all())
	}
	log.Flush()
	got := lines.all()
	if len(got) != 4 {
		t.Fatalf("after Flush, %d lines, want 4: %v", len(got), got)
	}
	last := got[3]
	if last["repeated"] != int64(9_999) || last["stage"] != string(edge.StagePublish) {
		t.Fatalf("summary line %v, want 9999 repeats at stage publish", last)
	}
	if err, _ := last["err"].(error); !errors.Is(err, edge.ErrQueueFull) {
		t.Fatalf("summary carries %v, want the last error held back", last["err"])
	}
	log.Flush()
	if len(lines.all()) != 4 {
		t.Fatal("a second Flush logged again with nothing held back")
	}
}

func TestErrorLogReleasesWhenTheIntervalEnds(t *testing.T) {
	lines := newLineLog()
	log := &edge.ErrorLog{Logger: slog.New(lines), Interval: 50 * time.Millisecond}
	log.Log("peer error", edge.ErrClosed, "peer", "a")
	log.Log("peer error", edge.ErrClosed, "peer", "b")
	log.Log("peer error", edge.ErrClosed, "peer", "c")
	for range 2 { // the first at once, the summary when the interval ends
		testenv.Recv(t, lines.added, 10*time.Second, "a log line")
	}
	got := lines.all()
	if got[1]["repeated"] != int64(2) || got[1]["peer"] != "c" {
		t.Fatalf("summary %v, want 2 repeats with the last peer", got[1])
	}
}

func TestErrorLogKindsAreBounded(t *testing.T) {
	lines := newLineLog()
	log := &edge.ErrorLog{Logger: slog.New(lines), Interval: time.Hour}
	for i := range 5_000 {
		log.Log("changing text", errors.New(fmt.Sprint("error ", i)))
	}
	if got := len(lines.all()); got > 300 {
		t.Fatalf("%d lines for errors of ever-changing text, want them folded past a bound", got)
	}
}

func TestDefaultOnErrorAggregatesAndStatsCountExactly(t *testing.T) {
	d := newFakeDriver()
	d.block = make(chan struct{})
	lines := newLineLog()
	h := newHub(t, edge.Options{Sync: d.sync, Logger: slog.New(lines), QueueSize: 1})
	const n = 5_000
	for i := range n {
		if err := h.Publish(context.Background(), edge.Message{Topic: "t", Data: edge.Text(fmt.Sprint(i))}); err != nil {
			t.Fatal(err)
		}
	}
	close(d.block)
	if err := h.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	st := h.Stats()
	if st.Dropped == 0 || st.Relayed+st.Dropped != n || st.PublishErrors != st.Dropped || st.Errors != st.Dropped {
		t.Fatalf("stats %+v: want every drop counted once at stage publish", st)
	}
	if got := len(lines.all()); got != 1 {
		t.Fatalf("%d log lines for %d drops, want 1 until the interval ends", got, st.Dropped)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	got := lines.all()
	if len(got) != 2 || got[1]["repeated"] != int64(st.Dropped-1) {
		t.Fatalf("after Close, lines %v: want the held-back count flushed", got)
	}
}
