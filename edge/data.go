package edge

import "unicode/utf8"

// Data is one WebSocket message body: UTF-8 text or binary.
//
// Bytes is shared, not copied, on its way to every subscriber: it must not be
// modified once it has been published or sent.
type Data struct {
	Bytes  []byte // the message body
	Binary bool   // a binary frame; false for a text frame, whose Bytes are UTF-8
}

// Text returns the text Data holding s.
func Text(s string) Data { return Data{Bytes: []byte(s)} }

// Binary returns the binary Data holding b. It does not copy b.
func Binary(b []byte) Data { return Data{Bytes: b, Binary: true} }

// Valid reports whether d can be sent as it is: binary data always, text
// only when it is UTF-8, as a WebSocket text frame must be.
func (d Data) Valid() bool { return d.Binary || utf8.Valid(d.Bytes) }

// String returns the body as a string, whatever its kind.
func (d Data) String() string { return string(d.Bytes) }

// Message is a published Data with its address.
//
// Namespace scopes a topic: peers of another namespace never receive the
// message. The empty Namespace means every namespace, and is only meaningful
// for a server-side publish (Hub.Publish).
type Message struct {
	Namespace string // the namespace of the subscribers; "" for every namespace
	Topic     string // the topic of the subscribers; never empty
	Data      Data   // the body
}
