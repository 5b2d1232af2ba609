package envelope_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/envelope"
	"github.com/edgesync/edgesync/internal/testenv"
)

// sameMessage reports whether a and b carry the same address and data. Nil
// and empty data are the same.
func sameMessage(a, b edge.Message) bool {
	return a.Namespace == b.Namespace && a.Topic == b.Topic &&
		a.Data.Binary == b.Data.Binary && bytes.Equal(a.Data.Bytes, b.Data.Bytes)
}

func mustEncode(tb testing.TB, id string, m edge.Message) []byte {
	tb.Helper()
	b, err := envelope.Encode(id, m)
	if err != nil {
		tb.Fatalf("Encode(%q, %+v): %v", id, m, err)
	}
	return b
}

func TestCrosswsEncodeVectors(t *testing.T) {
	for _, v := range testenv.CrosswsVectors(t).Encode {
		t.Run(v.Name, func(t *testing.T) {
			want := v.Message

			id, got, err := envelope.Decode([]byte(v.Wire))
			if err != nil {
				t.Fatalf("Decode(crossws wire): %v", err)
			}
			if id != v.ID || !sameMessage(got, want) {
				t.Errorf("Decode(crossws wire) = %q, %+v; want %q, %+v", id, got, v.ID, want)
			}

			wire := mustEncode(t, v.ID, want)
			var gotJSON, wantJSON map[string]any
			if err := json.Unmarshal(wire, &gotJSON); err != nil {
				t.Fatalf("Encode wrote invalid JSON %s: %v", wire, err)
			}
			if err := json.Unmarshal([]byte(v.Wire), &wantJSON); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(gotJSON, wantJSON) {
				t.Errorf("Encode = %s\ncrossws writes %s", wire, v.Wire)
			}
			// Encode escapes as JSON.stringify does, so the bytes match too.
			if string(wire) != v.Wire {
				t.Errorf("Encode = %s\nnot byte for byte what crossws writes: %s", wire, v.Wire)
			}
		})
	}
}

func TestCrosswsDecodeVectors(t *testing.T) {
	for _, v := range testenv.CrosswsVectors(t).Decode {
		t.Run(v.Name, func(t *testing.T) {
			id, got, err := envelope.Decode([]byte(v.Wire))
			if !v.OK {
				if err == nil {
					t.Fatalf("Decode(%q) = %q, %+v; crossws rejects it", v.Wire, id, got)
				}
				if !errors.Is(err, envelope.ErrMalformed) {
					t.Errorf("Decode(%q) error %v does not wrap ErrMalformed", v.Wire, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Decode(%q): %v; crossws accepts it", v.Wire, err)
			}
			if id != v.ID || !sameMessage(got, v.Message) {
				t.Errorf("Decode(%q) = %q, %+v; want %q, %+v", v.Wire, id, got, v.ID, v.Message)
			}
		})
	}
}

func TestRoundTrip(t *testing.T) {
	allBytes := make([]byte, 256)
	for i := range allBytes {
		allBytes[i] = byte(i)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	random := make([]byte, 4096)
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	long := strings.Repeat("x", 1<<16)

	tests := []struct {
		name string
		id   string
		msg  edge.Message
	}{
		{"text", "i1", edge.Message{Namespace: "/_ws", Topic: "chat", Data: edge.Text("hello")}},
		{"empty-text", "i1", edge.Message{Namespace: "/_ws", Topic: "chat", Data: edge.Text("")}},
		{"nil-text", "i1", edge.Message{Namespace: "/_ws", Topic: "chat"}},
		{"empty-binary", "i1", edge.Message{Namespace: "/_ws", Topic: "chat", Data: edge.Binary(nil)}},
		{"empty-namespace", "i1", edge.Message{Topic: "news", Data: edge.Text("to every namespace")}},
		{"empty-everything", "", edge.Message{}},
		{"all-bytes", "i1", edge.Message{Namespace: "/x", Topic: "y", Data: edge.Binary(allBytes)}},
		{"random-binary", "i1", edge.Message{Namespace: "/x", Topic: "y", Data: edge.Binary(random)}},
		{"binary-1", "i1", edge.Message{Topic: "y", Data: edge.Binary([]byte{0xff})}},
		{"binary-2", "i1", edge.Message{Topic: "y", Data: edge.Binary([]byte{0xff, 0})}},
		{"unicode", "ïd-✓", edge.Message{Namespace: "/room/ü", Topic: "émoji 🌍", Data: edge.Text("héllo 🌍 日本語 \u2028\u2029 \uFFFD \U0010FFFF")}},
		{"escapes", "a\"b\\c", edge.Message{Namespace: "\x00\x01\x1f", Topic: "\t\n\r\b\f", Data: edge.Text("\"\\/<>&\x7f\x00 end")}},
		{"json-payload", "i1", edge.Message{Namespace: "/_ws", Topic: "chat", Data: edge.Text(`{"user":"a","text":"hi"}`)}},
		{"long-text", "i1", edge.Message{Namespace: "/_ws", Topic: "chat", Data: edge.Text(long)}},
		{"long-id", long, edge.Message{Namespace: long, Topic: long, Data: edge.Text("x")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wire := mustEncode(t, tt.id, tt.msg)
			if !json.Valid(wire) {
				t.Fatalf("Encode wrote invalid JSON: %s", wire)
			}
			id, got, err := envelope.Decode(wire)
			if err != nil {
				t.Fatalf("Decode(%s): %v", wire, err)
			}
			if id != tt.id || !sameMessage(got, tt.msg) {
				t.Errorf("round trip = %q, %+v; want %q, %+v", id, got, tt.id, tt.msg)
			}
			ref, refOK := referenceDecode(wire)
			if !refOK || ref.id != tt.id || !sameMessage(ref.msg, tt.msg) {
				t.Errorf("encoding/json reads %s as %+v (ok %v); want %q, %+v", wire, ref, refOK, tt.id, tt.msg)
			}
		})
	}
}

func TestEncodeFormat(t *testing.T) {
	tests := []struct {
		name string
		id   string
		msg  edge.Message
		want string
	}{
		{
			"text", "i", edge.Message{Namespace: "/n", Topic: "t", Data: edge.Text("x")},
			`{"id":"i","msg":{"namespace":"/n","topic":"t","binary":false,"data":"x"}}`,
		},
		{
			"binary", "i", edge.Message{Namespace: "/n", Topic: "t", Data: edge.Binary([]byte{0, 1, 2, 0xfe, 0xff})},
			`{"id":"i","msg":{"namespace":"/n","topic":"t","binary":true,"data":"AAEC/v8="}}`,
		},
		{
			// As JSON.stringify: short escapes where JSON has them,
			// \u00xx in lower case for other control characters, and
			// '<', '>', '&', DEL, U+2028 and U+2029 as they are.
			"escapes", "\"\\", edge.Message{Namespace: "\b\f\n\r\t", Topic: "\x00\x1f\x7f", Data: edge.Text("<>&/\u2028\u2029")},
			`{"id":"\"\\","msg":{"namespace":"\b\f\n\r\t","topic":"\u0000\u001f` + "\x7f" + `","binary":false,"data":"<>&/` + "\u2028\u2029" + `"}}`,
		},
		{
			// Each byte outside a valid UTF-8 sequence is one U+FFFD,
			// as encoding/json writes it.
			"invalid-utf8", "\xff", edge.Message{Namespace: "a\xc3", Topic: "\xed\xa0\x80", Data: edge.Text("\xf0\x9f\x8c x\xe2\x82")},
			`{"id":"` + "\uFFFD" + `","msg":{"namespace":"a` + "\uFFFD" + `","topic":"` + "\uFFFD\uFFFD\uFFFD" + `","binary":false,"data":"` + "\uFFFD\uFFFD\uFFFD x\uFFFD\uFFFD" + `"}}`,
		},
		{
			"invalid-utf8-binary", "i", edge.Message{Topic: "t", Data: edge.Binary([]byte("\xff"))},
			`{"id":"i","msg":{"namespace":"","topic":"t","binary":true,"data":"/w=="}}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := mustEncode(t, tt.id, tt.msg)
			if string(got) != tt.want {
				t.Errorf("Encode =\n%s\nwant\n%s", got, tt.want)
			}
			// encoding/json replaces invalid UTF-8 the same way.
			var ref struct {
				ID  string `json:"id"`
				Msg struct {
					Namespace, Topic, Data string
				} `json:"msg"`
			}
			ref.ID, ref.Msg.Namespace, ref.Msg.Topic = tt.id, tt.msg.Namespace, tt.msg.Topic
			ref.Msg.Data = string(tt.msg.Data.Bytes)
			refWire, err := json.Marshal(ref)
			if err != nil {
				t.Fatal(err)
			}
			json.Unmarshal(refWire, &ref)
			id, m, err := envelope.Decode(got)
			if err != nil {
				t.Fatalf("Decode(%s): %v", got, err)
			}
			if id != ref.ID || m.Namespace != ref.Msg.Namespace || m.Topic != ref.Msg.Topic {
				t.Errorf("Decode(%s) = %q, %q, %q; encoding/json round trips to %q, %q, %q",
					got, id, m.Namespace, m.Topic, ref.ID, ref.Msg.Namespace, ref.Msg.Topic)
			}
			if !tt.msg.Data.Binary && string(m.Data.Bytes) != ref.Msg.Data {
				t.Errorf("Decode(%s) data = %q; encoding/json round trips to %q", got, m.Data.Bytes, ref.Msg.Data)
			}
		})
	}
}

func TestAppendEncode(t *testing.T) {
	m := edge.Message{Namespace: "/_ws", Topic: "chat", Data: edge.Text("hello")}
	want := mustEncode(t, "i1", m)
	got, err := envelope.AppendEncode([]byte("prefix"), "i1", m)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "prefix"+string(want) {
		t.Errorf("AppendEncode = %s; want prefix%s", got, want)
	}

	buf := make([]byte, 0, 1024)
	bin := edge.Message{Namespace: "/_ws", Topic: "chat", Data: edge.Binary(make([]byte, 300))}
	odd := edge.Message{Namespace: "/ü", Topic: "\x00\"", Data: edge.Text("héllo 🌍 \xff\n")}
	allocs := testing.AllocsPerRun(100, func() {
		buf, _ = envelope.AppendEncode(buf[:0], "i1", m)
		buf, _ = envelope.AppendEncode(buf[:0], "i1", bin)
		buf, _ = envelope.AppendEncode(buf[:0], "i1", odd)
	})
	if allocs != 0 {
		t.Errorf("AppendEncode into a buffer with room allocates %v times per run; want 0", allocs)
	}
}

// TestDecodeCopies checks that a decoded message outlives a reused input buffer.
func TestDecodeCopies(t *testing.T) {
	for _, m := range []edge.Message{
		{Namespace: "/n", Topic: "t", Data: edge.Text("text")},
		{Namespace: "/n", Topic: "t", Data: edge.Binary([]byte("binary"))},
	} {
		raw := mustEncode(t, "id", m)
		id, got, err := envelope.Decode(raw)
		if err != nil {
			t.Fatal(err)
		}
		for i := range raw {
			raw[i] = ' '
		}
		if id != "id" || !sameMessage(got, m) {
			t.Errorf("after the input was overwritten, Decode's result is %q, %+v; want %q, %+v", id, got, "id", m)
		}
	}
}

func TestDecode(t *testing.T) {
	const msg = `"msg":{"namespace":"/n","topic":"t","data":"x"}`
	tests := []struct {
		name string
		wire string
		id   string
		want edge.Message
	}{
		{"whitespace", " \t\r\n{ \"id\" : \"a\" ,\n \"msg\" : { \"namespace\" : \"/n\" , \"topic\" : \"t\" , \"data\" : \"x\" } } \n",
			"a", edge.Message{Namespace: "/n", Topic: "t", Data: edge.Text("x")}},
		{"last-key-wins", `{"id":1,"id":"b",` + msg + `,"msg":{"namespace":"/m","topic":"u","data":"y"}}`,
			"b", edge.Message{Namespace: "/m", Topic: "u", Data: edge.Text("y")}},
		{"last-msg-wins-whole", `{"id":"a","msg":{"namespace":"/n","topic":"t","binary":true,"data":"AA=="},"msg":{"namespace":"/m","topic":"u","data":"y"}}`,
			"a", edge.Message{Namespace: "/m", Topic: "u", Data: edge.Text("y")}},
		{"escaped-keys", `{"\u0069d":"a","m\u0073g":{"n\u0061mespace":"/n","\u0074opic":"t","d\u0061ta":"","\u0062inary":true}}`,
			"a", edge.Message{Namespace: "/n", Topic: "t", Data: edge.Binary([]byte{})}},
		{"keys-are-case-sensitive", `{"ID":1,"id":"a","Msg":1,` + msg + `}`,
			"a", edge.Message{Namespace: "/n", Topic: "t", Data: edge.Text("x")}},
		{"nested-fields-ignored", `{"id":"a","x":{"id":1,"msg":2},"msg":{"namespace":"/n","topic":"t","data":"x","y":{"topic":1}}}`,
			"a", edge.Message{Namespace: "/n", Topic: "t", Data: edge.Text("x")}},
		{"unknown-values", `{"n":-0.5e+10,"a":[1,[true,false,null],{"":""}],"s":"\"\\\/\b\f\n\r\t\u00e9",` + `"id":"a",` + msg + `}`,
			"a", edge.Message{Namespace: "/n", Topic: "t", Data: edge.Text("x")}},
		// crossws reads "binary" as JavaScript does: any truthy value.
		{"binary-string-is-binary", `{"id":"a","msg":{"namespace":"/n","topic":"t","binary":"false","data":"AA=="}}`,
			"a", edge.Message{Namespace: "/n", Topic: "t", Data: edge.Binary([]byte{0})}},
		{"binary-1-is-binary", `{"id":"a","msg":{"namespace":"/n","topic":"t","binary":1,"data":"AA=="}}`,
			"a", edge.Message{Namespace: "/n", Topic: "t", Data: edge.Binary([]byte{0})}},
		{"binary-object-is-binary", `{"id":"a","msg":{"namespace":"/n","topic":"t","binary":{},"data":"AA=="}}`,
			"a", edge.Message{Namespace: "/n", Topic: "t", Data: edge.Binary([]byte{0})}},
		{"binary-0-is-text", `{"id":"a","msg":{"namespace":"/n","topic":"t","binary":-0.0e5,"data":"AA=="}}`,
			"a", edge.Message{Namespace: "/n", Topic: "t", Data: edge.Text("AA==")}},
		{"binary-empty-string-is-text", `{"id":"a","msg":{"namespace":"/n","topic":"t","binary":"","data":"AA=="}}`,
			"a", edge.Message{Namespace: "/n", Topic: "t", Data: edge.Text("AA==")}},
		{"binary-false-is-text", `{"id":"a","msg":{"namespace":"/n","topic":"t","binary":false,"data":"AA=="}}`,
			"a", edge.Message{Namespace: "/n", Topic: "t", Data: edge.Text("AA==")}},
		// and base64 as atob does: padding optional, white space ignored.
		{"unpadded-base64", `{"id":"a","msg":{"namespace":"/n","topic":"t","binary":true,"data":"AAEC/v8"}}`,
			"a", edge.Message{Namespace: "/n", Topic: "t", Data: edge.Binary([]byte{0, 1, 2, 0xfe, 0xff})}},
		{"base64-with-spaces", `{"id":"a","msg":{"namespace":"/n","topic":"t","binary":true,"data":" AA\nEC\t/v8= "}}`,
			"a", edge.Message{Namespace: "/n", Topic: "t", Data: edge.Binary([]byte{0, 1, 2, 0xfe, 0xff})}},
		{"binary-null-is-text", `{"id":"a","msg":{"namespace":"/n","topic":"t","binary":null,"data":"AA=="}}`,
			"a", edge.Message{Namespace: "/n", Topic: "t", Data: edge.Text("AA==")}},
		{"binary-escaped-base64", `{"id":"a","msg":{"namespace":"/n","topic":"t","binary":true,"data":"AAEC\/v8="}}`,
			"a", edge.Message{Namespace: "/n", Topic: "t", Data: edge.Binary([]byte{0, 1, 2, 0xfe, 0xff})}},
		{"escapes", `{"id":"\"\\\/\b\f\n\r\t","msg":{"namespace":"\u00e9\u00E9","topic":"\ud83c\udf0d","data":"\u0000"}}`,
			"\"\\/\b\f\n\r\t", edge.Message{Namespace: "éé", Topic: "🌍", Data: edge.Text("\x00")}},
		{"lone-surrogates", `{"id":"\ud800","msg":{"namespace":"\udc00\ud83c\udf0d","topic":"\ud83cx","data":"\ud83c\u0041"}}`,
			"\uFFFD", edge.Message{Namespace: "\uFFFD🌍", Topic: "\uFFFDx", Data: edge.Text("\uFFFDA")}},
		{"invalid-utf8", "{\"id\":\"\xff\",\"msg\":{\"namespace\":\"\xed\xa0\x80\",\"topic\":\"é\xc3\",\"data\":\"\xf0\x9f\x8c\"}}",
			"\uFFFD", edge.Message{Namespace: "\uFFFD\uFFFD\uFFFD", Topic: "é\uFFFD", Data: edge.Text("\uFFFD\uFFFD\uFFFD")}},
		{"raw-unicode", `{"id":"ïd","msg":{"namespace":"/ü","topic":"🌍","data":"` + "\u2028" + `"}}`,
			"ïd", edge.Message{Namespace: "/ü", Topic: "🌍", Data: edge.Text("\u2028")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, got, err := envelope.Decode([]byte(tt.wire))
			if err != nil {
				t.Fatalf("Decode(%s): %v", tt.wire, err)
			}
			if id != tt.id || !sameMessage(got, tt.want) {
				t.Errorf("Decode(%s) = %q, %+v; want %q, %+v", tt.wire, id, got, tt.id, tt.want)
			}
			checkAgainstReference(t, []byte(tt.wire))
		})
	}
}

func TestDecodeErrors(t *testing.T) {
	const msg = `"msg":{"namespace":"/n","topic":"t","binary":false,"data":"x"}`
	tests := []struct {
		name, wire, err string
	}{
		{"empty", ``, "empty input"},
		{"space", ` `, "unexpected end of input looking for the beginning of a value"},
		{"not-json", `hello`, `invalid character 'h' looking for the beginning of a value at offset 0`},
		{"bom", "\ufeff{}", "invalid byte 0xef looking for the beginning of a value at offset 0"},
		{"truncated", `{"id":"a",` + msg[:20], "unexpected end of input in string literal"},
		{"trailing-garbage", `{"id":"a",` + msg + `}xyz`, `invalid character 'x' after the top-level value at offset 73`},
		{"two-objects", `{"id":"a",` + msg + `} {}`, `invalid character '{' after the top-level value at offset 74`},
		{"trailing-comma", `{"id":"a",` + msg + `,}`, `invalid character '}' looking for the beginning of an object key at offset 73`},
		{"single-quotes", `{'id':"a"}`, `invalid character '\'' looking for the beginning of an object key at offset 1`},
		{"control-char", "{\"id\":\"a\nb\"}", "invalid byte 0x0a in string literal at offset 8"},
		{"bad-escape", `{"id":"\x41"}`, `invalid character 'x' in string escape code at offset 8`},
		{"bad-unicode-escape", `{"id":"\u12G4"}`, `invalid character 'G' in \u hexadecimal character escape at offset 11`},
		{"leading-zero", `{"v":01,"id":"a",` + msg + `}`, `invalid character '1' after an object value at offset 6`},
		{"bare-fraction", `{"v":1.,"id":"a",` + msg + `}`, `invalid character ',' after decimal point in numeric literal at offset 7`},
		{"plus-number", `{"v":+1}`, `invalid character '+' looking for the beginning of a value at offset 5`},
		{"bad-literal", `{"v":nul}`, `invalid character '}' in literal null at offset 8`},
		{"array", `[1,2,3]`, "not a JSON object (got array)"},
		{"string", `"a"`, "not a JSON object (got string)"},
		{"null", `null`, "not a JSON object (got null)"},
		{"id-missing", `{` + msg + `}`, "id is missing"},
		{"id-number", `{"id":1,` + msg + `}`, "id is not a string (got number)"},
		{"id-null", `{"id":null,` + msg + `}`, "id is not a string (got null)"},
		{"id-last-is-number", `{"id":"a","id":1,` + msg + `}`, "id is not a string (got number)"},
		{"msg-missing", `{"id":"a"}`, "msg is missing"},
		{"msg-string", `{"id":"a","msg":"{}"}`, "msg is not an object (got string)"},
		{"msg-last-is-array", `{"id":"a",` + msg + `,"msg":[]}`, "msg is not an object (got array)"},
		{"namespace-missing", `{"id":"a","msg":{"topic":"t","data":"x"}}`, "msg.namespace is missing"},
		{"namespace-missing-in-last-msg", `{"id":"a",` + msg + `,"msg":{"topic":"t","data":"x"}}`, "msg.namespace is missing"},
		{"topic-object", `{"id":"a","msg":{"namespace":"/n","topic":{},"data":"x"}}`, "msg.topic is not a string (got object)"},
		{"topic-boolean", `{"id":"a","msg":{"namespace":"/n","topic":true,"data":"x"}}`, "msg.topic is not a string (got boolean)"},
		{"data-null", `{"id":"a","msg":{"namespace":"/n","topic":"t","data":null}}`, "msg.data is not a string (got null)"},
		{"data-array", `{"id":"a","msg":{"namespace":"/n","topic":"t","binary":true,"data":[0]}}`, "msg.data is not a string (got array)"},
		{"fields-at-top", `{"id":"a","namespace":"/n","topic":"t","data":"x","msg":{}}`, "msg.namespace is missing"},
		{"bad-base64", `{"id":"a","msg":{"namespace":"/n","topic":"t","binary":true,"data":"AA=?"}}`, "msg.data is not valid base64: illegal base64 data at input byte 2"},
		{"base64-one-char-too-many", `{"id":"a","msg":{"namespace":"/n","topic":"t","binary":true,"data":"AAAAA"}}`, "msg.data is not valid base64: its length is not that of base64"},
		{"base64-three-pads", `{"id":"a","msg":{"namespace":"/n","topic":"t","binary":true,"data":"A==="}}`, "msg.data is not valid base64: illegal base64 data at input byte 1"},
		{"url-base64", `{"id":"a","msg":{"namespace":"/n","topic":"t","binary":true,"data":"_w=="}}`, "msg.data is not valid base64: illegal base64 data at input byte 0"},
		{"too-deep", `{"id":"a",` + msg + `,"x":` + strings.Repeat("[", 10000) + strings.Repeat("]", 10000) + `}`, "nested too deeply at offset 10076"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, m, err := envelope.Decode([]byte(tt.wire))
			if err == nil {
				t.Fatalf("Decode(%s) = %q, %+v; want error", tt.wire, id, m)
			}
			if !errors.Is(err, envelope.ErrMalformed) {
				t.Errorf("Decode error %v does not wrap ErrMalformed", err)
			}
			if want := "envelope: malformed: " + tt.err; err.Error() != want {
				t.Errorf("Decode(%.100s) error\n%s\nwant\n%s", tt.wire, err, want)
			}
			if id != "" || !reflect.DeepEqual(m, edge.Message{}) {
				t.Errorf("Decode returned %q, %+v with its error", id, m)
			}
			checkAgainstReference(t, []byte(tt.wire))
		})
	}
}

// TestDecodeDepth checks the nesting limit, which is encoding/json's.
func TestDecodeDepth(t *testing.T) {
	const msg = `"msg":{"namespace":"/n","topic":"t","data":"x"}`
	// The envelope's own object is one level.
	for _, depth := range []int{9998, 9999, 10000} {
		wire := []byte(`{"id":"a",` + msg + `,"x":` + strings.Repeat("[", depth) + strings.Repeat("]", depth) + `}`)
		_, _, err := envelope.Decode(wire)
		if ok := depth < 10000; (err == nil) != ok {
			t.Errorf("depth %d: Decode error %v; want ok %v", depth+1, err, ok)
		}
		checkAgainstReference(t, wire)
	}
}

// decoded is what an envelope holds.
type decoded struct {
	id  string
	msg edge.Message
}

// referenceDecode decodes an envelope with encoding/json, by the rules of the
// format: it is what Decode must agree with.
func referenceDecode(raw []byte) (decoded, bool) {
	if !json.Valid(raw) {
		return decoded{}, false
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber() // 1e400 is a number, if not a float64
	var v any
	if err := dec.Decode(&v); err != nil {
		return decoded{}, false
	}
	top, ok := v.(map[string]any)
	if !ok {
		return decoded{}, false
	}
	id, ok := top["id"].(string)
	if !ok {
		return decoded{}, false
	}
	msg, ok := top["msg"].(map[string]any)
	if !ok {
		return decoded{}, false
	}
	ns, ok1 := msg["namespace"].(string)
	topic, ok2 := msg["topic"].(string)
	data, ok3 := msg["data"].(string)
	if !ok1 || !ok2 || !ok3 {
		return decoded{}, false
	}
	m := edge.Message{Namespace: ns, Topic: topic, Data: edge.Text(data)}
	if jsTruthy(msg["binary"]) {
		b, ok := atob(data)
		if !ok {
			return decoded{}, false
		}
		m.Data = edge.Binary(b)
	}
	return decoded{id, m}, true
}

// jsTruthy is JavaScript's truthiness of a value encoding/json decoded.
func jsTruthy(v any) bool {
	switch v := v.(type) {
	case nil:
		return false
	case bool:
		return v
	case string:
		return v != ""
	case json.Number:
		f, _ := v.Float64()
		return f != 0
	}
	return true // objects and arrays
}

// atob decodes base64 by the WHATWG forgiving-base64 rules, as atob does.
func atob(s string) ([]byte, bool) {
	s = strings.Map(func(r rune) rune {
		if strings.ContainsRune(" \t\n\f\r", r) {
			return -1
		}
		return r
	}, s)
	if len(s)%4 == 0 && strings.HasSuffix(s, "=") {
		s = strings.TrimSuffix(strings.TrimSuffix(s, "="), "=")
	}
	if len(s)%4 == 1 || strings.Contains(s, "=") {
		return nil, false
	}
	s += strings.Repeat("=", (4-len(s)%4)%4)
	b, err := base64.StdEncoding.DecodeString(s)
	return b, err == nil
}

// checkAgainstReference checks that Decode agrees with referenceDecode.
func checkAgainstReference(t *testing.T, raw []byte) {
	t.Helper()
	id, m, err := envelope.Decode(raw)
	ref, ok := referenceDecode(raw)
	if (err == nil) != ok {
		t.Fatalf("Decode(%q) error %v; encoding/json ok %v", raw, err, ok)
	}
	if ok && (id != ref.id || !sameMessage(m, ref.msg)) {
		t.Fatalf("Decode(%q) = %q, %+v; encoding/json reads %q, %+v", raw, id, m, ref.id, ref.msg)
	}
}

func FuzzDecode(f *testing.F) {
	v := testenv.CrosswsVectors(f)
	for _, e := range v.Encode {
		f.Add([]byte(e.Wire))
	}
	for _, d := range v.Decode {
		f.Add([]byte(d.Wire))
	}
	// Escaped and repeated keys, surrogates, invalid UTF-8, nesting.
	f.Add([]byte(`{"\u0069d":"\ud83c\udf0d\ud800","id":"a","m\u0073g":{"namespace":"\u00e9","topic":"t","binary":true,"data":"AAEC\/v8="}}`))
	f.Add([]byte("{\"id\":\"\xff\xed\xa0\x80\",\"msg\":{\"namespace\":\"\",\"topic\":\"\",\"data\":\"\xf0\x9f\x8c\"},\"msg\":[]}"))
	f.Add([]byte(`{"id":"a","x":[{"msg":-1.5e+3},[true,false,null]],"msg":{"namespace":"/n","topic":"t","binary":null,"data":""}}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		id, m, err := envelope.Decode(raw)
		if err != nil {
			if !errors.Is(err, envelope.ErrMalformed) {
				t.Fatalf("Decode error %v does not wrap ErrMalformed", err)
			}
		}
		checkAgainstReference(t, raw)
		if err != nil {
			return
		}
		if !utf8.ValidString(id) || !utf8.ValidString(m.Namespace) || !utf8.ValidString(m.Topic) ||
			!m.Data.Binary && !utf8.Valid(m.Data.Bytes) {
			t.Fatalf("Decode(%q) = %q, %+v: not valid UTF-8", raw, id, m)
		}
		wire := mustEncode(t, id, m)
		id2, m2, err := envelope.Decode(wire)
		if err != nil {
			t.Fatalf("Decode(Encode(Decode(%q))) = Decode(%s): %v", raw, wire, err)
		}
		if id2 != id || !sameMessage(m2, m) {
			t.Fatalf("Decode(Encode(%q, %+v)) = %q, %+v", id, m, id2, m2)
		}
	})
}

// wellFormed returns s with each byte that is not part of a valid UTF-8
// sequence replaced by U+FFFD: what Encode writes of s.
func wellFormed(s string) string { return string([]rune(s)) }

func FuzzEncode(f *testing.F) {
	for _, v := range testenv.CrosswsVectors(f).Encode {
		m := v.Message
		f.Add(v.ID, m.Namespace, m.Topic, m.Data.Bytes, m.Data.Binary)
	}
	f.Add("\xff", "a\xc3", "\xed\xa0\x80", []byte("\xf0\x9f\x8c x\xe2\x82 \x00\x1f\"\\"), false)
	f.Fuzz(func(t *testing.T, id, ns, topic string, data []byte, binary bool) {
		m := edge.Message{Namespace: ns, Topic: topic, Data: edge.Data{Bytes: data, Binary: binary}}
		wire := mustEncode(t, id, m)
		if !json.Valid(wire) {
			t.Fatalf("Encode(%q, %+v) = %s: invalid JSON", id, m, wire)
		}

		// What comes back: the strings, well formed; binary data exactly.
		want := edge.Message{Namespace: wellFormed(ns), Topic: wellFormed(topic), Data: edge.Data{Bytes: data, Binary: binary}}
		if !binary {
			want.Data.Bytes = []byte(wellFormed(string(data)))
		}
		gotID, got, err := envelope.Decode(wire)
		if err != nil {
			t.Fatalf("Decode(Encode(%q, %+v)) = Decode(%s): %v", id, m, wire, err)
		}
		if gotID != wellFormed(id) || !sameMessage(got, want) {
			t.Fatalf("Decode(Encode(%q, %+v)) = %q, %+v; want %q, %+v", id, m, gotID, got, wellFormed(id), want)
		}
		ref, ok := referenceDecode(wire)
		if !ok || ref.id != gotID || !sameMessage(ref.msg, want) {
			t.Fatalf("encoding/json reads %s as %q, %+v (ok %v); want %q, %+v", wire, ref.id, ref.msg, ok, gotID, want)
		}

		// Invalid UTF-8 is written exactly as its replacement would be.
		if again := mustEncode(t, wellFormed(id), want); !bytes.Equal(again, wire) {
			t.Fatalf("Encode of the well-formed message = %s; want %s", again, wire)
		}
		appended, err := envelope.AppendEncode([]byte("prefix"), id, m)
		if err != nil || string(appended) != "prefix"+string(wire) {
			t.Fatalf("AppendEncode = %s, %v; want prefix%s", appended, err, wire)
		}
	})
}

// benchMessages are the messages benchmarked: a 100-byte text message and a
// 1 KiB binary one, stamped with an instance id of the usual length.
func benchMessages() []struct {
	name string
	msg  edge.Message
} {
	text := strings.Repeat(`{"user":"alice","text":"hello, world"} `, 3)[:100]
	bin := make([]byte, 1024)
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range bin {
		bin[i] = byte(rng.Uint32())
	}
	return []struct {
		name string
		msg  edge.Message
	}{
		{"text-100B", edge.Message{Namespace: "/_ws", Topic: "chat", Data: edge.Text(text)}},
		{"binary-1KiB", edge.Message{Namespace: "/_ws", Topic: "chat", Data: edge.Binary(bin)}},
	}
}

const benchID = "3f1c2b7e-9d4a-4c1e-8b2f-5a6d7e8f4a31"

func BenchmarkEncode(b *testing.B) {
	for _, bm := range benchMessages() {
		b.Run(bm.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(bm.msg.Data.Bytes)))
			for b.Loop() {
				if _, err := envelope.Encode(benchID, bm.msg); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

func BenchmarkAppendEncode(b *testing.B) { benchAppendEncode(b, envelope.AppendEncode) }

func BenchmarkDecode(b *testing.B) {
	benchDecode(b, func(tb testing.TB, m edge.Message) []byte { return mustEncode(tb, benchID, m) }, envelope.Decode)
}

// benchAppendEncode measures encode into a reused buffer, for each of
// benchMessages.
func benchAppendEncode(b *testing.B, encode func(dst []byte, id string, m edge.Message) ([]byte, error)) {
	for _, bm := range benchMessages() {
		b.Run(bm.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(bm.msg.Data.Bytes)))
			var buf []byte
			for b.Loop() {
				var err error
				if buf, err = encode(buf[:0], benchID, bm.msg); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// benchDecode measures decode of the wire that wire makes, for each of
// benchMessages.
func benchDecode(b *testing.B, wire func(testing.TB, edge.Message) []byte, decode func([]byte) (string, edge.Message, error)) {
	for _, bm := range benchMessages() {
		b.Run(bm.name, func(b *testing.B) {
			w := wire(b, bm.msg)
			b.ReportAllocs()
			b.SetBytes(int64(len(bm.msg.Data.Bytes)))
			for b.Loop() {
				if _, _, err := decode(w); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

func TestEchoPrefixBeginsEveryEnvelopeOfTheID(t *testing.T) {
	signer, err := envelope.NewSigner("c", [][]byte{[]byte("k")})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"b3d1c0de-0000-4000-8000-000000000000", `a"b\c`, "ü,\"msg\":"} {
		prefix := envelope.EchoPrefix(id)
		msg := edge.Message{Namespace: "/_ws", Topic: "t", Data: edge.Text("x")}
		plain, _ := envelope.Encode(id, msg)
		signed, _ := signer.Encode(id, msg)
		other, _ := envelope.Encode(id+"x", msg)
		if !strings.HasPrefix(string(plain), prefix) || !strings.HasPrefix(string(signed), prefix) {
			t.Errorf("id %q: prefix %q does not begin %s / %s", id, prefix, plain, signed)
		}
		if strings.HasPrefix(string(other), prefix) {
			t.Errorf("id %q: prefix %q begins the envelope of another id, %s", id, prefix, other)
		}
	}
}
