// Package envelope is the wire format shared by every text backplane of
// edgesync (Redis pub/sub, Postgres LISTEN/NOTIFY, the cluster relay): one
// relayed edge.Message, stamped with the id of the instance that published it.
//
// An envelope is one JSON object:
//
//	{"id":"<instance id>","msg":{"namespace":"…","topic":"…","binary":false,"data":"…"}}
//
// Text data is written as a JSON string, as is. Binary data is written as
// standard, padded base64 (RFC 4648) with "binary":true. "binary" is always
// written.
//
// The format is the one of the crossws sync backplane (encodeEnvelope and
// decodeEnvelope), so Go and Node instances can share one channel. Encode
// writes the keys in the order crossws writes them and escapes strings the way
// JavaScript's JSON.stringify does: '"', '\\' and the control characters, and
// nothing else ('<', '>', '&', U+2028 and U+2029 are written as they are,
// which every JSON parser accepts). For a message whose strings are valid
// UTF-8 the output is therefore byte for byte what crossws writes.
//
// Strings in an edge.Message may hold invalid UTF-8, which JSON cannot carry:
// Encode writes each byte that is not part of a valid UTF-8 sequence as U+FFFD,
// the way encoding/json does. This applies to the id, the namespace, the topic
// and text data; binary data is carried exactly.
//
// Decode accepts what crossws accepts: a JSON object with a string "id" and an
// object "msg" holding the strings "namespace", "topic" and "data". Unknown
// fields are ignored. "binary" is read as crossws reads it, by JavaScript's
// truthiness: true, a non-zero number, a non-empty string, an object or an
// array mean binary; a missing "binary", false, 0, "" and null mean text.
// Binary data is decoded as the browser's atob decodes it, which crossws
// uses: padding is optional and ASCII white space is ignored. Keys are
// matched exactly, after their escapes are resolved, and when a key appears
// more than once the last one counts, as in JSON.parse. Anything else is
// rejected with an error that wraps ErrMalformed: invalid JSON (checked as
// strictly as encoding/json does, and nested at most 10000 deep), data after
// the object, binary data that atob would refuse. Strings are read as encoding/json reads them: an escaped lone
// surrogate and each byte that is not part of a valid UTF-8 sequence become
// U+FFFD.
//
// A Signer signs envelopes: it adds a last member, "sig", holding an
// HMAC-SHA256 of the unsigned envelope with a shared secret, and refuses, with
// an error wrapping ErrSignature, an envelope that does not carry a valid one.
// The envelopes of a nil Signer are unsigned, those of Encode.
package envelope

import (
	"encoding/base64"
	"errors"
	"slices"

	"github.com/edgesync/edgesync/edge"
)

// DefaultMaxMessageBytes is the largest envelope, in bytes, that the drivers
// built on this format (redissync, pgsync, clustersync) accept when their
// Options.MaxMessageBytes is zero: 1 MiB. A driver checks the size of an
// inbound payload before it decodes it.
const DefaultMaxMessageBytes = 1 << 20

// ErrMalformed is wrapped by every error Decode returns. The error's text says
// what is wrong, as in "envelope: malformed: msg.topic is not a string".
var ErrMalformed = errors.New("envelope: malformed")

// Encode returns the envelope of m published by the instance id.
//
// Every message can be encoded: the error is always nil. It is part of the
// signature so that drivers handle a failure should a later version of the
// format refuse some messages.
func Encode(id string, m edge.Message) ([]byte, error) {
	n := encodedLen(id, m)
	if !m.Data.Binary {
		// Room for some escapes: text is often JSON, full of quotes.
		n += len(m.Data.Bytes)/4 + 16
	}
	return AppendEncode(make([]byte, 0, n), id, m)
}

// AppendEncode appends the envelope of m published by the instance id to dst
// and returns the extended buffer. With a dst of enough capacity (a buffer
// reused from one message to the next) it does not allocate.
//
// Every message can be encoded: the error is always nil, as for Encode.
func AppendEncode(dst []byte, id string, m edge.Message) ([]byte, error) {
	dst = slices.Grow(dst, encodedLen(id, m))
	dst = append(dst, `{"id":`...)
	dst = appendQuoted(dst, id)
	dst = append(dst, `,"msg":{"namespace":`...)
	dst = appendQuoted(dst, m.Namespace)
	dst = append(dst, `,"topic":`...)
	dst = appendQuoted(dst, m.Topic)
	if m.Data.Binary {
		dst = append(dst, `,"binary":true,"data":"`...)
		dst = base64.StdEncoding.AppendEncode(dst, m.Data.Bytes)
		dst = append(dst, `"}}`...)
	} else {
		dst = append(dst, `,"binary":false,"data":`...)
		dst = appendQuoted(dst, m.Data.Bytes)
		dst = append(dst, `}}`...)
	}
	return dst, nil
}

// EchoPrefix returns how every envelope that id encodes begins, signed or
// not, up to and including the id and the comma after it: a payload that
// begins so is the instance's own echo, which a driver drops without
// decoding it. (The bytes `,"msg":` cannot occur inside the quoted id, where
// every quote is escaped.)
func EchoPrefix(id string) string {
	return string(appendQuoted([]byte(`{"id":`), id)) + ","
}

// encodedLen is the length of the envelope of m when no string needs
// escaping: a good first guess of the buffer it takes.
func encodedLen(id string, m edge.Message) int {
	const fixed = len(`{"id":"","msg":{"namespace":"","topic":"","binary":false,"data":""}}`)
	n := fixed + len(id) + len(m.Namespace) + len(m.Topic)
	if m.Data.Binary {
		return n + base64.StdEncoding.EncodedLen(len(m.Data.Bytes))
	}
	return n + len(m.Data.Bytes)
}

// Decode parses the envelope raw and returns the id of the instance that
// published it and the message it carries. The message does not share memory
// with raw, which may be reused once Decode returns.
//
// Decode returns an error wrapping ErrMalformed when raw is not an envelope.
func Decode(raw []byte) (id string, m edge.Message, err error) {
	d := decoder{buf: raw}
	if err := d.parse(); err != nil {
		return "", edge.Message{}, err
	}
	return d.build()
}
