package redissync

import (
	"time"

	"github.com/edgesync/edgesync/edge"
)

// NewWithProbeTiming is New with another probe interval and timeout.
func NewWithProbeTiming(opts Options, interval, timeout time.Duration) edge.Sync {
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
