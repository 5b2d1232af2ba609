package probe

import (
	"encoding/json"
	"testing"
	"time"
)

func TestFormat(t *testing.T) {
	prefix := Prefix(`in"stance`)
	p := string(Append(nil, prefix, 42))
	var v struct {
		Edgesync string          `json:"edgesync"`
		ID       string          `json:"id"`
		N        uint64          `json:"n"`
		Msg      json.RawMessage `json:"msg"`
	}
	if err := json.Unmarshal([]byte(p), &v); err != nil || v.Edgesync != "probe" || v.ID != `in"stance` || v.N != 42 || v.Msg != nil {
		t.Fatalf("probe %s decodes to %+v, %v", p, v, err)
	}
	if !Is(p) {
		t.Fatalf("Is(%s) = false", p)
	}
	if n, ok := Parse(p, prefix); !ok || n != 42 {
		t.Fatalf("Parse = %d, %v", n, ok)
	}
	for _, other := range []string{string(Append(nil, Prefix("other"), 42)), prefix + "x}", prefix + "1", `{"id":"x","msg":{}}`} {
		if _, ok := Parse(other, prefix); ok {
			t.Errorf("Parse(%s) took it as its own probe", other)
		}
	}
}

func TestState(t *testing.T) {
	var s State
	if _, _, ok := s.Next(); ok {
		t.Fatal("a probe is sent while the subscription is down")
	}
	s.Up()
	n, gen, ok := s.Next()
	if !ok {
		t.Fatal("no probe while up")
	}
	if _, _, ok := s.Next(); ok {
		t.Fatal("two probes on their way at once")
	}
	start := time.Now()
	s.Published(n, gen, start, true)
	if s.Overdue(start.Add(time.Second), 2*time.Second) || !s.Overdue(start.Add(3*time.Second), 2*time.Second) {
		t.Fatal("Overdue does not follow the timeout")
	}
	if s.Answered() {
		t.Fatal("Answered before a probe came back")
	}
	s.Got(n)
	if s.Overdue(start.Add(time.Hour), time.Second) {
		t.Fatal("a probe that came back is overdue")
	}
	if !s.Answered() {
		t.Fatal("not Answered once a probe came back")
	}
	s.Down()
	s.Up()
	if s.Answered() {
		t.Fatal("Answered carried over to a new subscription")
	}

	// A probe back before its Publish returned is not expected again.
	n, gen, _ = s.Next()
	s.Got(n)
	s.Published(n, gen, start, true)
	if s.Overdue(start.Add(time.Hour), time.Second) {
		t.Fatal("a probe back early is overdue")
	}

	// A probe of a lost subscription, or one not published, is not expected.
	n, gen, _ = s.Next()
	s.Down()
	s.Up()
	s.Published(n, gen, start, true)
	if s.Overdue(start.Add(time.Hour), time.Second) {
		t.Fatal("a probe of a lost subscription is overdue")
	}
	n, gen, _ = s.Next()
	s.Published(n, gen, start, false)
	if s.Overdue(start.Add(time.Hour), time.Second) {
		t.Fatal("a probe that was not published is overdue")
	}
	if _, _, ok := s.Next(); !ok {
		t.Fatal("no probe after a failed one")
	}
}

// A forged probe, with a number the instance never sent, does not switch
// the check off.
func TestStateIgnoresForgedNumbers(t *testing.T) {
	var s State
	s.Up()
	s.Got(1 << 60)
	n, gen, ok := s.Next()
	if !ok {
		t.Fatal("no probe")
	}
	start := time.Now()
	s.Published(n, gen, start, true)
	s.Got(n + 1)
	s.Got(n - 1)
	if !s.Overdue(start.Add(time.Hour), time.Second) {
		t.Fatal("a probe that did not come back is not overdue")
	}
}
