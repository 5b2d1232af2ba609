package clustersync

import (
	"errors"
	"fmt"
	"runtime"
)

// validateSocket checks that path can name a Unix socket.
func validateSocket(path string) error {
	if path == "" {
		return errors.New("clustersync: Socket is required")
	}
	// sockaddr_un holds the path and its terminating NUL: 108 bytes on
	// Linux, 104 on the BSDs and macOS.
	limit := 103
	if runtime.GOOS == "linux" {
		limit = 107
	}
	if len(path) > limit {
		return fmt.Errorf("clustersync: socket path of %d bytes, limit %d: %s", len(path), limit, path)
	}
	return nil
}
