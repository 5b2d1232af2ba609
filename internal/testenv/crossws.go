package testenv

import (
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/edgesync/edgesync/edge"
)

// Vectors are crossws's own verdicts on its envelope: what its
// encodeEnvelope wrote for messages, and what its decodeEnvelope made of
// wires. A Go instance that agrees with them can share a channel with a
// crossws instance.
type Vectors struct {
	Encode []EncodeVector
	Decode []DecodeVector
}

// EncodeVector is a message that crossws encoded, and the wire it wrote.
type EncodeVector struct {
	Name    string
	ID      string // the instance id stamped on the envelope
	Message edge.Message
	Wire    string
}

// DecodeVector is a wire that crossws decoded, and its verdict.
type DecodeVector struct {
	Name    string
	Wire    string
	OK      bool         // crossws accepts the wire
	ID      string       // the id it read, when OK
	Message edge.Message // the message it read, when OK
}

// vectorFields are the fields of one vector in the file.
type vectorFields struct {
	Name      string `json:"name"`
	Wire      string `json:"wire"`
	OK        bool   `json:"ok"`
	ID        string `json:"id"`
	Namespace string `json:"namespace"`
	Topic     string `json:"topic"`
	Binary    bool   `json:"binary"`
	DataText  string `json:"data_text"`
	DataHex   string `json:"data_hex"` // binary data, in hex
}

func (f vectorFields) message(tb testing.TB) edge.Message {
	tb.Helper()
	data := edge.Text(f.DataText)
	if f.Binary {
		b, err := hex.DecodeString(f.DataHex)
		if err != nil {
			tb.Fatalf("crossws vector %s: %v", f.Name, err)
		}
		data = edge.Binary(b)
	}
	return edge.Message{Namespace: f.Namespace, Topic: f.Topic, Data: data}
}

// CrosswsVectors loads the crossws vectors from
// envelope/testdata/crossws-envelope.json. It finds the file from the source
// of this package, so it serves the tests of any package. It fails tb when
// the file cannot be read or lacks either kind of vector.
func CrosswsVectors(tb testing.TB) Vectors {
	tb.Helper()
	_, self, _, ok := runtime.Caller(0)
	if !ok {
		tb.Fatal("cannot locate the source of package testenv")
	}
	path := filepath.Join(filepath.Dir(self), "..", "..", "envelope", "testdata", "crossws-envelope.json")
	raw, err := os.ReadFile(path)
	if err != nil {
		tb.Fatalf("crossws vectors: %v", err)
	}
	var file struct {
		Encode []vectorFields `json:"encode"`
		Decode []vectorFields `json:"decode"`
	}
	if err := json.Unmarshal(raw, &file); err != nil {
		tb.Fatalf("crossws vectors in %s: %v", path, err)
	}
	if len(file.Encode) == 0 || len(file.Decode) == 0 {
		tb.Fatalf("crossws vectors in %s: %d encode and %d decode vectors, want some of each", path, len(file.Encode), len(file.Decode))
	}
	var v Vectors
	for _, f := range file.Encode {
		v.Encode = append(v.Encode, EncodeVector{Name: f.Name, ID: f.ID, Message: f.message(tb), Wire: f.Wire})
	}
	for _, f := range file.Decode {
		d := DecodeVector{Name: f.Name, Wire: f.Wire, OK: f.OK}
		if f.OK {
			d.ID, d.Message = f.ID, f.message(tb)
		}
		v.Decode = append(v.Decode, d)
	}
	return v
}
