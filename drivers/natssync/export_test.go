package natssync

import (
	"time"

	"github.com/edgesync/edgesync/edge"
)

// NewWithCheckTiming is New with another interval and timeout of the
// connection check.
func NewWithCheckTiming(opts Options, interval, timeout time.Duration) edge.Sync {
	sync := New(opts)
	return func(inst edge.Instance) (edge.Driver, error) {
		d, err := sync(inst)
		if err == nil {
			d.(*driver).interval = interval
			d.(*driver).timeout = timeout
		}
		return d, err
	}
}

// Subject is the subject of a message to topic in namespace on channel.
func Subject(channel, namespace, topic string) string { return subject(channel, namespace, topic) }
