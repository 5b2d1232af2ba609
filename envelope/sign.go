package envelope

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"slices"
	"sync"

	"github.com/edgesync/edgesync/edge"
)

// ErrSignature is wrapped by the error a Signer returns for an envelope that
// carries no signature, or none made with one of its keys.
var ErrSignature = errors.New("envelope: missing or invalid signature")

// The signature member that Sign writes last in an object:
// ,"sig":"<44 characters of padded standard base64>"}
const (
	sigOpen   = `,"sig":"`
	sigClose  = `"}`
	sigB64Len = (sha256.Size + 2) / 3 * 4
	sigLen    = len(sigOpen) + sigB64Len + len(sigClose)
)

// closeBrace ends the signed object that Verify hashes.
var closeBrace = []byte{'}'}

// Signer signs envelopes with HMAC-SHA256 and verifies their signatures,
// with a list of shared secrets: the first key signs, and a signature made
// with any of them is accepted. A cluster rotates its key in three steps:
// every instance gets the new key second (all still sign with the old one
// and accept both), then first (all sign with the new one and still accept
// the old one), then alone.
//
// A signed envelope is the unsigned one with one more member, last:
//
//	{"id":"…","msg":{…},"sig":"<base64 of the HMAC-SHA256>"}
//
// The HMAC is computed over the channel the Signer is for and the bytes of
// the unsigned envelope, that is the signed one with the member ,"sig":"…"
// taken out: the length of the channel name as 8 bytes big-endian, the
// name, then the envelope. A verifier reproduces them exactly, whatever the
// envelope holds, and whatever it parses from the envelope is covered by the
// signature; an envelope signed for one channel does not verify on another,
// even where the channels share their keys. The signature is written as
// padded standard base64 (RFC 4648), 44 characters.
//
// A nil *Signer, as NewSigner returns for no keys, signs nothing and accepts
// every well-formed envelope, signed or not: its envelopes are byte for byte
// those of Encode, the crossws format. A crossws instance, which ignores
// members it does not know, reads signed envelopes, but what it publishes is
// unsigned, so it cannot publish into a signed cluster.
//
// A signature says that the envelope was written by a holder of a key; it
// does not make an envelope unique: one captured on the backplane can be
// published again, and verifies again. A Signer is safe for concurrent use.
type Signer struct {
	keys    [][]byte
	channel []byte      // what every HMAC begins with: the channel, length first
	macs    []sync.Pool // of *mac, one pool per key
}

// mac is an HMAC of one key and room for its sums, reused through a pool.
type mac struct {
	hash.Hash
	sum [sha256.Size]byte
}

// NewSigner returns the Signer of keys for the envelopes of channel:
// keys[0] signs, and each of keys verifies. It returns nil and no error when
// keys is empty, and an error when a key is empty. The keys are copied. A key
// should be at least 32 random bytes.
func NewSigner(channel string, keys [][]byte) (*Signer, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	s := &Signer{
		keys:    make([][]byte, len(keys)),
		channel: append(binary.BigEndian.AppendUint64(nil, uint64(len(channel))), channel...),
		macs:    make([]sync.Pool, len(keys)),
	}
	for i, k := range keys {
		if len(k) == 0 {
			return nil, fmt.Errorf("envelope: signing key %d of %d is empty", i+1, len(keys))
		}
		s.keys[i] = bytes.Clone(k)
	}
	return s, nil
}

// mac returns an HMAC of key i that has hashed the channel, to be given
// back with putMAC.
func (s *Signer) mac(i int) *mac {
	h, ok := s.macs[i].Get().(*mac)
	if ok {
		h.Reset()
	} else {
		h = &mac{Hash: hmac.New(sha256.New, s.keys[i])}
	}
	h.Write(s.channel)
	return h
}

func (s *Signer) putMAC(i int, h *mac) { s.macs[i].Put(h) }

// Encode returns the envelope of m published by the instance id, signed.
// With a nil s it is Encode.
func (s *Signer) Encode(id string, m edge.Message) ([]byte, error) {
	if s == nil {
		return Encode(id, m)
	}
	n := encodedLen(id, m) + sigLen
	if !m.Data.Binary {
		n += len(m.Data.Bytes)/4 + 16
	}
	return s.AppendEncode(make([]byte, 0, n), id, m)
}

// AppendEncode appends the envelope of m published by the instance id,
// signed, to dst and returns the extended buffer. With a dst of enough
// capacity it does not allocate. With a nil s it is AppendEncode.
func (s *Signer) AppendEncode(dst []byte, id string, m edge.Message) ([]byte, error) {
	if s == nil {
		return AppendEncode(dst, id, m)
	}
	start := len(dst)
	dst = slices.Grow(dst, encodedLen(id, m)+sigLen)
	dst, err := AppendEncode(dst, id, m)
	if err != nil {
		return dst, err
	}
	return s.Sign(dst, start)
}

// Sign signs the JSON object buf[start:], an envelope or any other object of
// at least one member, and returns buf extended: the object's closing '}' is
// replaced by the member ,"sig":"…" and a '}'. The object must end with
// its '}', with no white space after it. With a nil s, buf is returned as it
// is. Sign returns an error wrapping ErrMalformed when buf[start:] does not
// look like such an object.
func (s *Signer) Sign(buf []byte, start int) ([]byte, error) {
	if s == nil {
		return buf, nil
	}
	if start < 0 || start > len(buf) {
		return buf, malformed("signing: start %d out of range [0, %d]", start, len(buf))
	}
	obj := buf[start:]
	if len(obj) < len(`{"":0}`) || obj[0] != '{' || obj[len(obj)-1] != '}' {
		return buf, malformed("signing: not an object with members")
	}
	h := s.mac(0)
	h.Write(obj)
	buf = slices.Grow(buf[:len(buf)-1], sigLen-1)
	buf = append(buf, sigOpen...)
	buf = base64.StdEncoding.AppendEncode(buf, h.Sum(h.sum[:0]))
	s.putMAC(0, h)
	return append(buf, sigClose...), nil
}

// Verify checks that raw, a signed JSON object, ends with a signature
// member made with one of the keys of s, as Sign writes it. It returns an
// error wrapping ErrSignature when raw holds no such member, or its
// signature was made with no key of s, and nil when s is nil. It does not
// check that raw is an envelope: Decode does.
func (s *Signer) Verify(raw []byte) error {
	if s == nil {
		return nil
	}
	n := len(raw) - sigLen // the signed object is raw[:n] + "}"
	if n < len(`{"":0`) || raw[0] != '{' || string(raw[n:n+len(sigOpen)]) != sigOpen ||
		string(raw[len(raw)-len(sigClose):]) != sigClose {
		return fmt.Errorf("%w: the object does not end with a %q member", ErrSignature, "sig")
	}
	var got [sha256.Size + 1]byte // Decode needs room for 44 characters without padding
	b64 := raw[n+len(sigOpen) : len(raw)-len(sigClose)]
	if k, err := base64.StdEncoding.Strict().Decode(got[:], b64); err != nil || k != sha256.Size {
		return fmt.Errorf("%w: the %q member is not the base64 of an HMAC-SHA256", ErrSignature, "sig")
	}
	for i := range s.keys {
		h := s.mac(i)
		h.Write(raw[:n])
		h.Write(closeBrace)
		ok := hmac.Equal(got[:sha256.Size], h.Sum(h.sum[:0]))
		s.putMAC(i, h)
		if ok {
			return nil
		}
	}
	return fmt.Errorf("%w: signed with none of the %d accepted keys", ErrSignature, len(s.keys))
}

// Decode verifies the signature of the envelope raw, then parses it as
// Decode does. It returns an error wrapping ErrSignature when the signature
// is missing or was made with no key of s, and one wrapping ErrMalformed
// when raw is not an envelope. With a nil s it is Decode.
func (s *Signer) Decode(raw []byte) (id string, m edge.Message, err error) {
	if err := s.Verify(raw); err != nil {
		return "", edge.Message{}, err
	}
	return Decode(raw)
}
