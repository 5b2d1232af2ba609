package natssync

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// Limits of the subjects the driver builds. A subject travels in the
// control line of every PUB and MSG, which a server bounds (max_control_line,
// 4 KiB by default), so neither the channel nor a token may grow without
// bound.
const (
	// MaxChannelBytes is the longest Options.Channel.
	MaxChannelBytes = 256
	// maxTokenBytes is the longest escaped token: a longer one is hashed.
	maxTokenBytes = 128
)

// Tokens of a subject. Every byte a token holds is one of tokenSafe, '%',
// or, in the forms below, '~'.
const (
	// emptyToken stands for the empty name (a namespace-wide publish, an
	// empty topic). Escaping never yields a lone '~'.
	emptyToken = "~"
	// hashMark begins the token of a name too long to escape: "~" and the
	// unpadded base64url of its SHA-256, 44 bytes in all.
	hashMark  = '~'
	hexDigits = "0123456789ABCDEF"
)

// tokenSafe reports whether b stands for itself in a token.
func tokenSafe(b byte) bool {
	return 'a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' || '0' <= b && b <= '9' || b == '-' || b == '_'
}

// subjectToken returns the subject token of name, a namespace or a topic:
//
//   - the empty name is "~";
//   - a name whose escaped form is at most 128 bytes is that form: each
//     byte of [A-Za-z0-9_-] as it is, every other byte as '%' and two
//     upper-case hexadecimal digits ("/_ws" is "%2F_ws", "a.b" is "a%2Eb");
//   - a longer name is "~" and the unpadded base64url of its SHA-256.
//
// Every token is a valid, literal NATS subject token: not empty, free of
// '.', '*', '>' and white space, printable ASCII. Distinct names of the
// first two forms have distinct tokens, from which the name can be read back
// (by undoing the escapes); a hashed token stands for every name with that
// hash, which the envelope tells apart.
func subjectToken(name string) string {
	if name == "" {
		return emptyToken
	}
	n := 0 // the escaped length
	for i := 0; i < len(name); i++ {
		if tokenSafe(name[i]) {
			n++
		} else {
			n += 3
		}
		if n > maxTokenBytes {
			sum := sha256.Sum256([]byte(name))
			return string(base64.RawURLEncoding.AppendEncode([]byte{hashMark}, sum[:]))
		}
	}
	if n == len(name) {
		return name // the common case: nothing to escape, nothing to allocate
	}
	var b strings.Builder
	b.Grow(n)
	for i := 0; i < len(name); i++ {
		c := name[i]
		if tokenSafe(c) {
			b.WriteByte(c)
		} else {
			b.WriteByte('%')
			b.WriteByte(hexDigits[c>>4])
			b.WriteByte(hexDigits[c&0xF])
		}
	}
	return b.String()
}

// validToken reports whether token is a literal NATS subject token that this
// package could have written: not empty, printable ASCII, without '.', '*',
// '>' or white space.
func validToken(token string) bool {
	if token == "" {
		return false
	}
	for i := 0; i < len(token); i++ {
		if c := token[i]; c <= ' ' || c >= 0x7F || c == '.' || c == '*' || c == '>' {
			return false
		}
	}
	return true
}

// validateChannel checks that channel can prefix the driver's subjects: one
// or more literal tokens separated by '.', none of them empty or holding a
// wildcard ('*', '>'), white space, a control character or a byte outside
// ASCII, and at most MaxChannelBytes in all.
func validateChannel(channel string) error {
	switch {
	case channel == "":
		return errors.New("natssync: Options.Channel is empty")
	case len(channel) > MaxChannelBytes:
		return fmt.Errorf("natssync: Options.Channel is %d bytes: longer than %d", len(channel), MaxChannelBytes)
	}
	for i, token := range strings.Split(channel, ".") {
		if !validToken(token) {
			return fmt.Errorf("natssync: Options.Channel %q: token %d (%q) is not a literal subject token: "+
				"tokens are separated by '.', not empty, and free of '*', '>', white space, control characters and non-ASCII bytes",
				channel, i+1, token)
		}
	}
	return nil
}

// subject returns the subject of a message to topic in namespace:
// "<channel>.<namespace token>.<topic token>".
func subject(channel, namespace, topic string) string {
	return channel + "." + subjectToken(namespace) + "." + subjectToken(topic)
}
