package longlived_test

import (
	"log"
	"net/http"
	"time"

	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/longlived"
)

// The limits on what one peer sends. New sets every one to its default;
// these are for an application whose clients upload files in binary
// messages of up to 1 MiB, at up to 4 MiB a second each.
func ExampleHandler_inboundLimits() {
	hub, err := edge.New(edge.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer hub.Close()
	h := longlived.New(hub, edge.Hooks{
		Error: func(p edge.Peer, err error) {
			// A peer that crosses a frame limit is reported here,
			// then closed with 1008 Policy Violation. A peer that
			// only sends too fast is slowed down, not reported.
			log.Printf("peer %s: %v", p.ID(), err)
		},
	})
	h.ReadLimit = 1 << 20        // the largest message
	h.BytesPerSecond = 4 << 20   // paced, not closed, beyond this
	h.InboundBurst = time.Second // 4 MiB at once after a quiet spell
	h.MessagesPerSecond = 200    // paced, not closed, beyond this
	h.MaxMessageFrames = 4096    // clients that write 256-byte fragments
	h.FramesPerSecond = 20000    // continuation and control frames; closed beyond
	mux := http.NewServeMux()
	mux.Handle("/_ws", h) // then serve mux, and call h.Close on shutdown
}
