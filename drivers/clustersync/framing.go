package clustersync

import (
	"fmt"

	"github.com/edgesync/edgesync/envelope"
)

// channelEnd returns where the channel name that starts frame ends: the
// name is frame[1:end] and the envelope frame[end:]. It returns an error
// wrapping envelope.ErrMalformed for a frame too short for its name.
func channelEnd(frame []byte) (end int, err error) {
	if len(frame) == 0 || 1+int(frame[0]) > len(frame) {
		return 0, fmt.Errorf("clustersync: frame of %d bytes too short for its channel name: %w", len(frame), envelope.ErrMalformed)
	}
	return 1 + int(frame[0]), nil
}
