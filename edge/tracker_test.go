package edge

import "testing"

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestFlushWaitsForEarlierWorkOnly(t *testing.T) {
	var tr tracker
	if !closed(tr.flush()) {
		t.Fatal("flush with nothing in flight waits")
	}

	first := tr.add()
	f1 := tr.flush()
	second := tr.add() // after the flush: must not hold it up
	if closed(f1) {
		t.Fatal("flush returned with earlier work in flight")
	}
	tr.done(first)
	if !closed(f1) {
		t.Fatal("flush still waits for later work")
	}

	f2 := tr.flush()
	third := tr.add()
	f3 := tr.flush()
	tr.done(third)
	if closed(f3) {
		t.Fatal("flush returned before earlier epochs were done")
	}
	tr.done(second)
	if !closed(f2) || !closed(f3) {
		t.Fatal("flushes not released in order")
	}
}
