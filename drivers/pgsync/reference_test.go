package pgsync

import (
	"bytes"
	"errors"
	"testing"

	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/envelope"
)

// fuzzDriver returns a signed driver that is never connected: its pool
// connects lazily.
func fuzzDriver(f *testing.F) *driver {
	d, err := newDriver(Options{
		ConnString: "postgres://127.0.0.1:1/none",
		Channel:    "fuzz",
		Keys:       [][]byte{[]byte("a key of the fuzzed cluster, 32 bytes long")},
	}, edge.Instance{ID: "fuzz-instance"})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { d.Close() })
	return d
}

func FuzzReference(f *testing.F) {
	d := fuzzDriver(f)
	f.Add(d.appendReference(nil, 42, newToken()))
	f.Add([]byte(`{"edgesync":"ref","id":"x","ref":1,"token":"AAAAAAAAAAAAAAAAAAAAAA"}`))
	f.Add([]byte(`{"edgesync":"ref","id":"x","ref":1}`))
	f.Add([]byte(`{"edgesync":"ref","id":"x","ref":-1,"token":"AAAAAAAAAAAAAAAAAAAAAA","sig":"x"}`))
	f.Add([]byte(`{"edgesync":"ref","id":"x","ref":1.5,"token":"AAAAAAAAAAAAAAAAAAAAA="}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		// What the listener does before it reads a row: it never panics,
		// and refuses what it does not accept with a known error.
		verr := d.signer.Verify(raw)
		if verr != nil && !errors.Is(verr, envelope.ErrSignature) {
			t.Fatalf("Verify(%q) = %v; want ErrSignature", raw, verr)
		}
		ref, err := parseReference(raw)
		if err != nil {
			if !errors.Is(err, envelope.ErrMalformed) {
				t.Fatalf("parseReference(%q) = %v; want ErrMalformed", raw, err)
			}
			return
		}
		if ref.Edgesync != "ref" || ref.Ref <= 0 || len(ref.Token) != tokenLen {
			t.Fatalf("parseReference(%q) accepted %+v", raw, ref)
		}
		// The reference this instance would write for the row parses back
		// to it, verifies, and verifies no more once changed.
		own := d.appendReference(nil, ref.Ref, ref.Token)
		back, err := parseReference(own)
		if err != nil || back.Ref != ref.Ref || back.Token != ref.Token || back.ID != "fuzz-instance" {
			t.Fatalf("parseReference(%s) = %+v, %v; want row %d token %q", own, back, err, ref.Ref, ref.Token)
		}
		if err := d.signer.Verify(own); err != nil {
			t.Fatalf("Verify(%s) = %v", own, err)
		}
		if !bytes.HasPrefix(own, []byte(refMarker)) {
			t.Fatalf("reference %s does not begin with %s", own, refMarker)
		}
		own[len(refMarker)+3] ^= 1
		if d.signer.Verify(own) == nil {
			t.Fatalf("Verify accepted the changed reference %s", own)
		}
	})
}
