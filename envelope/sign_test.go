package envelope_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/envelope"
	"github.com/edgesync/edgesync/internal/testenv"
)

var (
	keyOld = []byte("the old shared secret of the cluster, 32+ bytes")
	keyNew = []byte("the new shared secret of the cluster, 32+ bytes")
)

// channel is the channel of the test signers.
const channel = "the test channel"

func mustSigner(tb testing.TB, keys ...[]byte) *envelope.Signer {
	tb.Helper()
	s, err := envelope.NewSigner(channel, keys)
	if err != nil {
		tb.Fatalf("NewSigner: %v", err)
	}
	return s
}

// wantSigned is the signed envelope of unsigned with key on channel,
// computed here the way the package documents it.
func wantSigned(unsigned, key []byte) string {
	mac := hmac.New(sha256.New, key)
	mac.Write(binary.BigEndian.AppendUint64(nil, uint64(len(channel))))
	mac.Write([]byte(channel))
	mac.Write(unsigned)
	return string(unsigned[:len(unsigned)-1]) + `,"sig":"` + base64.StdEncoding.EncodeToString(mac.Sum(nil)) + `"}`
}

func TestNilSignerWritesCrossws(t *testing.T) {
	s := mustSigner(t) // no keys: nil, unsigned
	if s != nil {
		t.Fatalf("NewSigner(nil) = %p; want nil", s)
	}
	for _, v := range testenv.CrosswsVectors(t).Encode {
		wire, err := s.Encode(v.ID, v.Message)
		if err != nil || string(wire) != v.Wire {
			t.Errorf("%s: nil Signer Encode = %s, %v; crossws writes %s", v.Name, wire, err, v.Wire)
		}
		appended, err := s.AppendEncode([]byte("x"), v.ID, v.Message)
		if err != nil || string(appended) != "x"+v.Wire {
			t.Errorf("%s: nil Signer AppendEncode = %s, %v", v.Name, appended, err)
		}
		id, m, err := s.Decode([]byte(v.Wire))
		if err != nil || id != v.ID || !sameMessage(m, v.Message) {
			t.Errorf("%s: nil Signer Decode = %q, %+v, %v", v.Name, id, m, err)
		}
	}
}

func TestNewSignerRefusesEmptyKey(t *testing.T) {
	if _, err := envelope.NewSigner(channel, [][]byte{keyNew, {}}); err == nil {
		t.Fatal("NewSigner with an empty key: no error")
	}
}

func TestSignedFormat(t *testing.T) {
	s := mustSigner(t, keyOld)
	for _, v := range testenv.CrosswsVectors(t).Encode {
		wire, err := s.Encode(v.ID, v.Message)
		if err != nil {
			t.Fatal(err)
		}
		if want := wantSigned([]byte(v.Wire), keyOld); string(wire) != want {
			t.Errorf("%s: signed = %s\nwant %s", v.Name, wire, want)
		}
		// crossws and Decode, which ignore "sig", read the same message.
		id, m, err := envelope.Decode(wire)
		if err != nil || id != v.ID || !sameMessage(m, v.Message) {
			t.Errorf("%s: Decode(signed) = %q, %+v, %v", v.Name, id, m, err)
		}
		ref, ok := referenceDecode(wire)
		if !ok || ref.id != v.ID || !sameMessage(ref.msg, v.Message) {
			t.Errorf("%s: encoding/json reads the signed envelope as %+v, %v", v.Name, ref, ok)
		}
		id, m, err = s.Decode(wire)
		if err != nil || id != v.ID || !sameMessage(m, v.Message) {
			t.Errorf("%s: Signer.Decode(signed) = %q, %+v, %v", v.Name, id, m, err)
		}
	}
}

func TestSignedDecodeRefuses(t *testing.T) {
	msg := edge.Message{Namespace: "/_ws", Topic: "chat", Data: edge.Text("hi")}
	signer := mustSigner(t, keyOld)
	unsigned := mustEncode(t, "a", msg)
	signed, _ := signer.Encode("a", msg)
	wrongKey, _ := mustSigner(t, []byte("a key nobody in the cluster holds")).Encode("a", msg)
	forged := []byte(strings.Replace(string(signed), `"namespace":"/_ws"`, `"namespace":""`, 1))
	moved := []byte(`{"sig":"` + string(signed[len(signed)-46:len(signed)-2]) + `",` + string(unsigned[1:]))
	for name, raw := range map[string][]byte{
		"unsigned":       unsigned,
		"wrong key":      wrongKey,
		"tampered":       forged,
		"sig not last":   moved,
		"sig with space": append(bytes.Clone(signed[:len(signed)-1]), ' ', '}'),
		"sig not base64": []byte(string(signed[:len(signed)-46]) + strings.Repeat("!", 44) + `"}`),
		"short":          []byte(`{"sig":""}`),
		"empty":          nil,
	} {
		id, m, err := signer.Decode(raw)
		if !errors.Is(err, envelope.ErrSignature) {
			t.Errorf("%s: Decode(%s) = %q, %+v, %v; want ErrSignature", name, raw, id, m, err)
		}
	}
}

func TestSignerRotation(t *testing.T) {
	msg := edge.Message{Namespace: "/_ws", Topic: "chat", Data: edge.Binary([]byte{0, 1, 2})}
	old := mustSigner(t, keyOld)
	step1 := mustSigner(t, keyOld, keyNew) // signs old, accepts both
	step2 := mustSigner(t, keyNew, keyOld) // signs new, accepts both
	step3 := mustSigner(t, keyNew)
	accepts := func(from, to *envelope.Signer) bool {
		wire, err := from.Encode("a", msg)
		if err != nil {
			t.Fatal(err)
		}
		_, got, err := to.Decode(wire)
		if err != nil && !errors.Is(err, envelope.ErrSignature) {
			t.Fatalf("Decode: %v does not wrap ErrSignature", err)
		}
		return err == nil && sameMessage(got, msg)
	}
	// Neighbouring steps run side by side during a rotation.
	for i, pair := range [][2]*envelope.Signer{{old, step1}, {step1, step2}, {step2, step3}} {
		if !accepts(pair[0], pair[1]) || !accepts(pair[1], pair[0]) {
			t.Errorf("rotation step %d: the two key lists do not accept each other", i+1)
		}
	}
	if accepts(old, step3) || accepts(step3, old) {
		t.Error("the old key alone and the new key alone accept each other")
	}
}

func TestSignAnyObject(t *testing.T) {
	s := mustSigner(t, keyOld)
	buf := []byte(`prefix{"edgesync":"ref","ref":1}`)
	signed, err := s.Sign(buf, len("prefix"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "prefix" + wantSigned([]byte(`{"edgesync":"ref","ref":1}`), keyOld); string(signed) != want {
		t.Fatalf("Sign = %s; want %s", signed, want)
	}
	if err := s.Verify(signed[len("prefix"):]); err != nil {
		t.Fatalf("Verify(Sign) = %v", err)
	}
	for _, bad := range []string{``, `{}`, `[1,2,3]`, `{"a":1} `} {
		if _, err := s.Sign([]byte(bad), 0); !errors.Is(err, envelope.ErrMalformed) {
			t.Errorf("Sign(%q) = %v; want ErrMalformed", bad, err)
		}
	}
	if _, err := s.Sign(buf, len(buf)+1); err == nil {
		t.Error("Sign with start past the end: no error")
	}
}

func TestSignedAppendEncodeDoesNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop HMACs: this counts allocations without it")
	}
	s := mustSigner(t, keyOld, keyNew)
	for _, bm := range benchMessages() {
		buf, _ := s.AppendEncode(nil, benchID, bm.msg)
		if n := testing.AllocsPerRun(100, func() {
			buf, _ = s.AppendEncode(buf[:0], benchID, bm.msg)
		}); n != 0 {
			t.Errorf("%s: Signer.AppendEncode allocates %v times with a reused buffer", bm.name, n)
		}
		if n := testing.AllocsPerRun(100, func() {
			if err := s.Verify(buf); err != nil {
				t.Fatal(err)
			}
		}); n != 0 {
			t.Errorf("%s: Verify allocates %v times", bm.name, n)
		}
	}
}

func FuzzSignedDecode(f *testing.F) {
	s := mustSigner(f, keyNew, keyOld)
	v := testenv.CrosswsVectors(f)
	for _, e := range v.Encode {
		f.Add([]byte(e.Wire), uint(0))
		signed, _ := s.Encode(e.ID, e.Message)
		f.Add(signed, uint(len(signed)/2))
	}
	f.Fuzz(func(t *testing.T, raw []byte, flip uint) {
		id, m, err := s.Decode(raw)
		if err != nil {
			if !errors.Is(err, envelope.ErrSignature) && !errors.Is(err, envelope.ErrMalformed) {
				t.Fatalf("Signer.Decode(%q) error %v wraps neither ErrSignature nor ErrMalformed", raw, err)
			}
		} else {
			// Accepted: it verifies, and reads as Decode reads it.
			id2, m2, err := envelope.Decode(raw)
			if err != nil || id2 != id || !sameMessage(m2, m) {
				t.Fatalf("Signer.Decode(%q) = %q, %+v but Decode = %q, %+v, %v", raw, id, m, id2, m2, err)
			}
		}

		// Whatever decodes, signed, decodes to the same with the keys, and
		// a change of any one byte of the signed envelope is refused.
		id, m, err = envelope.Decode(raw)
		if err != nil {
			return
		}
		signed, err := s.AppendEncode(nil, id, m)
		if err != nil {
			t.Fatal(err)
		}
		id2, m2, err := s.Decode(signed)
		if err != nil || id2 != id || !sameMessage(m2, m) {
			t.Fatalf("Signer.Decode(%s) = %q, %+v, %v; want %q, %+v", signed, id2, m2, err, id, m)
		}
		i := flip % uint(len(signed))
		signed[i] ^= 1 << (flip / uint(len(signed)) % 8)
		if _, _, err := s.Decode(signed); err == nil {
			t.Fatalf("Signer.Decode accepted %s, changed at byte %d", signed, i)
		}
	})
}

func BenchmarkSignedAppendEncode(b *testing.B) {
	benchAppendEncode(b, mustSigner(b, keyNew, keyOld).AppendEncode)
}

func BenchmarkSignedDecode(b *testing.B) {
	// Signed with the second key: the verifier tries both.
	signWithOld := func(tb testing.TB, m edge.Message) []byte {
		wire, err := mustSigner(tb, keyOld).Encode(benchID, m)
		if err != nil {
			tb.Fatal(err)
		}
		return wire
	}
	benchDecode(b, signWithOld, mustSigner(b, keyNew, keyOld).Decode)
}

// An envelope signed for one channel does not verify on another, even with
// the same key: a signed envelope cannot be replayed across channels.
func TestSignatureIsBoundToItsChannel(t *testing.T) {
	here := mustSigner(t, keyNew)
	there, err := envelope.NewSigner(channel+"-other", [][]byte{keyNew})
	if err != nil {
		t.Fatal(err)
	}
	wire, err := here.Encode("a", edge.Message{Namespace: "/", Topic: "t", Data: edge.Text("x")})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := here.Decode(wire); err != nil {
		t.Fatalf("on its own channel: %v", err)
	}
	if _, _, err := there.Decode(wire); !errors.Is(err, envelope.ErrSignature) {
		t.Fatalf("on another channel: %v, want ErrSignature", err)
	}
}
