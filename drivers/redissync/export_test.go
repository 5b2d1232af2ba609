package redissync

import (
	"time"

	"github.com/edgesync/edgesync/edge"
)

// NewWithPingInterval is New with another interval after which a silent
// subscription connection is probed.
func NewWithPingInterval(opts Options, interval time.Duration) edge.Sync {
	sync := New(opts)
	return func(inst edge.Instance) (edge.Driver, error) {
		d, err := sync(inst)
		if err == nil {
			d.(*driver).ping = interval
		}
		return d, err
	}
}
