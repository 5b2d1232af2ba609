//go:build !(darwin || dragonfly || freebsd || linux || netbsd || openbsd)

package clustersync

import (
	"errors"
	"os"
)

// tryLock fails: the relay election needs flock(2).
func tryLock(path string) (*os.File, error) {
	return nil, errors.New("clustersync: not supported on this operating system")
}
