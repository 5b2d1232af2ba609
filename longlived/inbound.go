package longlived

import (
	"math"
	"time"
)

// bucket is a token bucket: it holds up to burst tokens and gains rate
// tokens a second. take spends tokens even when there are not enough, so
// that a cost larger than the burst is paid for by waiting, like any other.
// A zero bucket is off. A bucket is not safe for concurrent use.
type bucket struct {
	rate   float64 // tokens a second; 0 means no limit
	burst  float64
	tokens float64
	last   time.Time // when tokens was last brought up to date
}

func newBucket(rate, burst float64) bucket {
	burst = math.Max(burst, 1)
	return bucket{rate: rate, burst: burst, tokens: burst}
}

// take spends n tokens at now and returns how long after now the bucket is
// no longer in debt, or 0 if it is not. Once that time has passed, the
// tokens spent since the bucket was made are at most burst + rate × the
// time elapsed.
func (b *bucket) take(now time.Time, n float64) time.Duration {
	if b.rate <= 0 {
		return 0
	}
	if !b.last.IsZero() {
		if elapsed := now.Sub(b.last).Seconds(); elapsed > 0 {
			b.tokens = math.Min(b.burst, b.tokens+elapsed*b.rate)
		}
	}
	if now.After(b.last) {
		b.last = now
	}
	b.tokens -= n
	if b.tokens >= 0 {
		return 0
	}
	// Rounded up, and one nanosecond more, so that a wait of this long
	// never ends in debt.
	return time.Duration(math.Ceil(-b.tokens/b.rate*float64(time.Second))) + 1
}

// inbound paces what one peer sends: its read loop waits, once a message
// has been read, until the peer's message and byte budgets cover it. While
// it waits nothing more is read from the connection, so TCP flow control
// slows the peer down; nothing is dropped.
type inbound struct {
	messages bucket
	bytes    bucket
	timer    *time.Timer // made at the first wait, then reused
}

func newInbound(h *Handler) inbound {
	var in inbound
	burst := h.inboundBurst().Seconds()
	if r := h.messagesPerSecond(); r > 0 {
		in.messages = newBucket(float64(r), float64(r)*burst)
	}
	if r := h.bytesPerSecond(); r > 0 {
		in.bytes = newBucket(float64(r), float64(r)*burst)
	}
	return in
}

// wait spends one message and n bytes of the budget, and returns once the
// budget covers them, or done is closed.
func (in *inbound) wait(n int, done <-chan struct{}) {
	now := time.Now()
	d := max(in.messages.take(now, 1), in.bytes.take(now, float64(n)))
	if d <= 0 {
		return
	}
	if in.timer == nil {
		in.timer = time.NewTimer(d)
	} else {
		in.timer.Reset(d)
	}
	select {
	case <-in.timer.C:
	case <-done:
		in.timer.Stop()
	}
}

// stop releases the timer.
func (in *inbound) stop() {
	if in.timer != nil {
		in.timer.Stop()
	}
}
