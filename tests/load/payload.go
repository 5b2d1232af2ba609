package main

import "errors"

// A message the load tool publishes is text, so that the chat's relay
// contract passes it through unchanged and it never looks like a command
// (those are JSON objects): a kind byte, then fixed-width lowercase hex
// fields, then padding to the message size.
//
//	offset  0: 'L' a measured message, 'W' a warm-up probe
//	offset  1: publisher number, 8 hex digits
//	offset  9: sequence number, 16 hex digits, from 0 for each publisher
//	offset 25: the instant it was due, nanoseconds since the run's
//	           start on the tool's monotonic clock, 16 hex digits
//	offset 41: the instant it was sent, on the same clock, 16 hex digits
//	offset 57: '.' up to -size bytes
const (
	headerLen = 57
	kindLoad  = 'L'
	kindProbe = 'W'
)

// header is what a message carries.
type header struct {
	kind      byte
	publisher int
	seq       int64
	due       int64 // ns since the run's start
	sent      int64 // likewise
}

var errNotLoad = errors.New("not a load tool message")

// newPayload returns a message buffer of size bytes (at least headerLen),
// padded, for put to fill in.
func newPayload(size int) []byte {
	b := make([]byte, max(size, headerLen))
	for i := headerLen; i < len(b); i++ {
		b[i] = '.'
	}
	return b
}

// put writes h into the first headerLen bytes of b.
func put(b []byte, h header) {
	b[0] = h.kind
	putHex(b[1:9], uint64(h.publisher))
	putHex(b[9:25], uint64(h.seq))
	putHex(b[25:41], uint64(h.due))
	putHex(b[41:57], uint64(h.sent))
}

const hexDigits = "0123456789abcdef"

func putHex(b []byte, v uint64) {
	for i := len(b) - 1; i >= 0; i-- {
		b[i] = hexDigits[v&0xf]
		v >>= 4
	}
}

// parse reads the header of a message. It allocates nothing.
func parse(b []byte) (header, error) {
	if len(b) < headerLen || (b[0] != kindLoad && b[0] != kindProbe) {
		return header{}, errNotLoad
	}
	p, ok1 := getHex(b[1:9])
	s, ok2 := getHex(b[9:25])
	d, ok3 := getHex(b[25:41])
	t, ok4 := getHex(b[41:57])
	if !ok1 || !ok2 || !ok3 || !ok4 || s>>63 != 0 || d>>63 != 0 || t>>63 != 0 {
		return header{}, errNotLoad
	}
	return header{kind: b[0], publisher: int(p), seq: int64(s), due: int64(d), sent: int64(t)}, nil
}

func getHex(b []byte) (uint64, bool) {
	var v uint64
	for _, c := range b {
		switch {
		case '0' <= c && c <= '9':
			v = v<<4 | uint64(c-'0')
		case 'a' <= c && c <= 'f':
			v = v<<4 | uint64(c-'a'+10)
		default:
			return 0, false
		}
	}
	return v, true
}
