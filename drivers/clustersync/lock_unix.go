//go:build darwin || dragonfly || freebsd || linux || netbsd || openbsd

package clustersync

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// tryLock takes an exclusive flock on the file at path, creating it, without
// waiting. It returns an error wrapping ErrRelayActive when another open file
// holds the lock. Closing the file, or the death of the process, releases it.
// The lock elects the relay only while the file is still the one at path,
// which a relay checks (server.checkLock): a lock on a file since removed or
// replaced elects no one.
func tryLock(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("clustersync: lock file: %w", err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w (%s)", ErrRelayActive, path)
		}
		return nil, fmt.Errorf("clustersync: lock %s: %w", path, err)
	}
	return f, nil
}
