package main

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestPayloadRoundTrip(t *testing.T) {
	b := newPayload(100)
	h := header{kind: kindLoad, publisher: 12345, seq: 1<<40 + 7, due: int64(90 * time.Second), sent: int64(91 * time.Second)}
	put(b, h)
	if len(b) != 100 || b[0] == '{' || b[99] != '.' {
		t.Fatalf("payload %q", b)
	}
	got, err := parse(b)
	if err != nil || got != h {
		t.Fatalf("parse = %+v, %v; want %+v", got, err, h)
	}
	for _, bad := range []string{"", `{"type":"who"}`, "L0000", "L" + string(b[1:9]) + "zz" + string(b[11:])} {
		if _, err := parse([]byte(bad)); err == nil {
			t.Errorf("parse(%q) accepted", bad)
		}
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = parse(b) }); n != 0 {
		t.Errorf("parse allocates %v times", n)
	}
}

func TestHistogramQuantiles(t *testing.T) {
	var h histogram
	vals := make([]int64, 100000)
	for i := range vals {
		vals[i] = int64(rand.ExpFloat64() * float64(time.Millisecond))
		h.record(vals[i])
	}
	slices.Sort(vals)
	var s snapshot
	s.add(&h)
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		exact := vals[int(q*float64(len(vals)))]
		got := int64(s.quantile(q))
		// The upper bound of the exact value's bucket: at most 1/32 above.
		if got < exact || float64(got) > float64(exact)*(1+1.0/histSub)+2 {
			t.Errorf("p%v = %d, exact %d", q*100, got, exact)
		}
	}
	if time.Duration(s.max) != time.Duration(vals[len(vals)-1]) || s.total != int64(len(vals)) {
		t.Errorf("max %d, total %d", s.max, s.total)
	}
	for v := int64(0); v < 1<<20; v += 7 {
		i := bucketOf(v)
		if v > bucketUpper(i) || (i > 0 && v <= bucketUpper(i-1)) {
			t.Fatalf("value %d in bucket %d of [%d, %d]", v, i, bucketUpper(i-1)+1, bucketUpper(i))
		}
	}
	if bucketOf(histMax*4) != histBuckets-1 || bucketOf(-5) != 0 {
		t.Error("out of range values are not clamped")
	}
	if n := testing.AllocsPerRun(100, func() { h.record(12345) }); n != 0 {
		t.Errorf("record allocates %v times", n)
	}
}

// TestReceiverCounts feeds a receiver messages out of order, with a
// duplicate, a gap and a stranger's, as a server could deliver them.
func TestReceiverCounts(t *testing.T) {
	tp := &topic{firstPub: 10}
	p := &publisher{id: 10, topic: tp, wake: make(chan struct{}, 1), readyCh: make(chan struct{}), readyN: 1}
	tp.pubs = []*publisher{p}
	r := &receiver{topic: tp, seen: make([][]uint64, 1), probed: make([]bool, 1), watch: []bool{true}}
	p.sent.Store(200)
	b := newPayload(50)
	send := func(kind byte, pub int, seq int64) {
		put(b, header{kind: kind, publisher: pub, seq: seq, due: 1000})
		r.deliver(b, 2000)
	}
	send(kindProbe, 10, 0)
	select {
	case <-p.readyCh:
	default:
		t.Error("a probe did not make the publisher ready")
	}
	for seq := int64(199); seq >= 0; seq-- {
		if seq != 150 {
			send(kindLoad, 10, seq)
		}
	}
	send(kindLoad, 10, 70)     // duplicate
	send(kindLoad, 11, 3)      // another room's publisher
	send(kindLoad, 10, 500)    // not sent yet
	r.deliver([]byte("hi"), 0) // a person
	if got := r.deliveries.Load(); got != 199 {
		t.Errorf("deliveries %d, want 199", got)
	}
	if r.dups.Load() != 1 || r.foreign.Load() != 3 {
		t.Errorf("duplicates %d, foreign %d; want 1 and 3", r.dups.Load(), r.foreign.Load())
	}
	if got := r.missing(0, 200); got != 1 {
		t.Errorf("missing %d, want 1", got)
	}
	if p.acked.Load() != 200 {
		t.Errorf("window acked %d, want 200", p.acked.Load())
	}
	if n := testing.AllocsPerRun(100, func() { send(kindLoad, 10, 5) }); n != 0 {
		t.Errorf("a delivery allocates %v times", n)
	}
}

func TestOutages(t *testing.T) {
	var tl []Sample
	for i, d := range []float64{100, 100, 0, 0, 100, 100, 3, 100, 100, 0} {
		tl = append(tl, Sample{T: float64(i + 1), Deliveries: d, Publishing: true})
	}
	tl = append(tl, Sample{T: 11, Deliveries: 0}) // the drain
	got := outages(tl)
	want := []Outage{{2, 4, true}, {6, 7, true}, {9, 10, false}}
	if !slices.Equal(got, want) {
		t.Errorf("outages %+v, want %+v", got, want)
	}
}
