//go:build race

package envelope_test

// raceEnabled: the race detector is on, and sync.Pool drops what it is given
// at random, so that code pooling its buffers allocates.
const raceEnabled = true
