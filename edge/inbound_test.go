package edge_test

import (
	"testing"

	"github.com/edgesync/edgesync/edge"
)

// What a driver counts through Instance.Inbound shows in Stats, apart from
// Received, which counts only what the driver handed on.
func TestInboundCountsInStats(t *testing.T) {
	d := newFakeDriver()
	var inst edge.Instance
	h, err := edge.New(edge.Options{Sync: func(i edge.Instance) (edge.Driver, error) { inst = i; return d, nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if inst.Inbound == nil {
		t.Fatal("the Hub gave its driver no Instance.Inbound")
	}
	inst.CountInbound(100)
	inst.CountInbound(20)
	inst.CountInbound(0)
	st := h.Stats()
	if st.BackplaneMessages != 3 || st.BackplaneBytes != 120 {
		t.Errorf("Stats: %d backplane messages, %d bytes; want 3 and 120", st.BackplaneMessages, st.BackplaneBytes)
	}
	if st.Received != 0 {
		t.Errorf("Stats.Received is %d; nothing was handed to the Hub", st.Received)
	}
	// A driver built by other code may have no Inbound.
	edge.Instance{}.CountInbound(1)
}
