package edge

import (
	"errors"
	"fmt"
)

var (
	// ErrClosed is returned by operations on a Hub, or on a Member, that has been closed.
	ErrClosed = errors.New("edge: hub closed")

	// ErrQueueFull is reported at StagePublish when a message is dropped
	// because an outbound queue is full.
	ErrQueueFull = errors.New("edge: outbound queue full, message dropped")

	// ErrNotFound is returned by a Registry for a connection it does not
	// hold, or holds no longer because it expired.
	ErrNotFound = errors.New("edge: connection not found")

	// ErrInvalidTopic is returned for an empty topic.
	ErrInvalidTopic = errors.New("edge: topic must not be empty")

	// ErrInvalidText is returned for text Data that is not valid UTF-8,
	// which a WebSocket text frame must be.
	ErrInvalidText = errors.New("edge: text data is not valid UTF-8")
)

// PanicError is what a recovered panic becomes when it is reported: a panic in
// a driver callback, a hook or an Endpoint never crashes the process.
type PanicError struct {
	Value any    // the value passed to panic
	Stack []byte // the stack of the goroutine that panicked
}

// Error implements error.
func (e *PanicError) Error() string { return "edge: recovered panic: " + fmt.Sprint(e.Value) }
