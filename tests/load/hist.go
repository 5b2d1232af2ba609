package main

import (
	"math/bits"
	"sync/atomic"
	"time"
)

// The latency histogram is log-linear, as HDR histograms are: values below
// 2×histSub nanoseconds have a bucket each, and every power of two above
// is split into histSub buckets, so that a bucket is at most 1/histSub
// (about 3%) wide relative to its values. Values from histMax up land in
// the last bucket.
const (
	histSubBits = 5
	histSub     = 1 << histSubBits
	histMax     = 1 << 37 // ns, about 137 s
	// histBuckets is the index of histMax's bucket, plus one.
	histBuckets = (37-histSubBits)*histSub + histSub*2
)

// bucketOf returns the bucket of a value in nanoseconds.
func bucketOf(v int64) int {
	if v < 0 {
		v = 0
	}
	if v >= histMax {
		return histBuckets - 1
	}
	if v < 2*histSub {
		return int(v)
	}
	shift := bits.Len64(uint64(v)) - (histSubBits + 1)
	return (shift+1)*histSub + int(v>>shift) - histSub
}

// bucketUpper returns the largest value bucket i holds.
func bucketUpper(i int) int64 {
	if i < 2*histSub {
		return int64(i)
	}
	shift := i/histSub - 1
	m := int64(i%histSub + histSub)
	return (m+1)<<shift - 1
}

// histogram counts latencies in fixed buckets. Goroutines may record into
// it and read it at the same time (the live progress reads what the
// receivers record), so the counts are atomic. Recording allocates
// nothing.
type histogram struct {
	counts [histBuckets]atomic.Int64
	max    atomic.Int64
}

// record counts one value in nanoseconds.
func (h *histogram) record(v int64) {
	h.counts[bucketOf(v)].Add(1)
	for {
		m := h.max.Load()
		if v <= m || h.max.CompareAndSwap(m, v) {
			return
		}
	}
}

// snapshot is a histogram's counts at one moment, merged from many.
type snapshot struct {
	counts [histBuckets]int64
	total  int64
	max    int64
}

// add adds h's counts to s.
func (s *snapshot) add(h *histogram) {
	if h == nil {
		return
	}
	for i := range s.counts {
		if c := h.counts[i].Load(); c != 0 {
			s.counts[i] += c
			s.total += c
		}
	}
	s.max = max(s.max, h.max.Load())
}

// sub returns s minus an earlier snapshot of the same histograms; its max
// is s's, the largest so far.
func (s *snapshot) sub(earlier *snapshot) *snapshot {
	d := &snapshot{max: s.max}
	for i := range s.counts {
		d.counts[i] = s.counts[i] - earlier.counts[i]
		d.total += d.counts[i]
	}
	return d
}

// quantile returns the value below which a fraction q of the counts lie:
// the upper bound of the bucket that holds it, never more than the max.
// It returns 0 for an empty snapshot.
func (s *snapshot) quantile(q float64) time.Duration {
	if s.total == 0 {
		return 0
	}
	rank := int64(q * float64(s.total))
	if rank >= s.total {
		rank = s.total - 1
	}
	var seen int64
	for i, c := range s.counts {
		seen += c
		if seen > rank {
			return time.Duration(min(bucketUpper(i), s.max))
		}
	}
	return time.Duration(s.max)
}

// mean returns the mean of the bucket midpoints, an estimate within a
// bucket's width.
func (s *snapshot) mean() time.Duration {
	if s.total == 0 {
		return 0
	}
	var sum float64
	for i, c := range s.counts {
		if c == 0 {
			continue
		}
		lo := int64(0)
		if i > 0 {
			lo = bucketUpper(i-1) + 1
		}
		sum += float64(c) * float64(lo+bucketUpper(i)) / 2
	}
	return time.Duration(sum / float64(s.total))
}
