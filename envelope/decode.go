package envelope

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/edgesync/edgesync/edge"
)

// maxDepth is how deeply arrays and objects may nest, as in encoding/json.
const maxDepth = 10000

// kind is the type of a JSON value, by its first byte.
type kind byte

const (
	missing  kind = 0
	object   kind = '{'
	array    kind = '['
	str      kind = '"'
	number   kind = '0'
	trueLit  kind = 't'
	falseLit kind = 'f'
	null     kind = 'n'
)

func (k kind) String() string {
	switch k {
	case object:
		return "object"
	case array:
		return "array"
	case str:
		return "string"
	case number:
		return "number"
	case trueLit, falseLit:
		return "boolean"
	case null:
		return "null"
	}
	return "nothing"
}

// span is one JSON value of the input, input[start:end]. For a string it is
// the content between the quotes, and escaped and nonASCII report whether that
// holds an escape or a byte outside ASCII.
type span struct {
	kind              kind
	start, end        int
	escaped, nonASCII bool
}

// The fields of an envelope that Decode reads.
const (
	fieldNone = iota
	fieldID
	fieldMsg
	fieldNamespace
	fieldTopic
	fieldBinary
	fieldData
	numFields
)

// decoder parses one envelope: it checks that buf is JSON, strictly, and
// notes where the fields of the envelope are.
type decoder struct {
	buf    []byte
	pos    int
	top    kind
	fields [numFields]span
}

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, args...)...)
}

// syntaxError describes the byte at d.pos, which is not what JSON allows.
func (d *decoder) syntaxError(what string) error {
	if d.pos >= len(d.buf) {
		if len(d.buf) == 0 {
			return malformed("empty input")
		}
		return malformed("unexpected end of input %s", what)
	}
	c := d.buf[d.pos]
	if c < ' ' || c >= utf8.RuneSelf {
		return malformed("invalid byte 0x%02x %s at offset %d", c, what, d.pos)
	}
	return malformed("invalid character %q %s at offset %d", c, what, d.pos)
}

func (d *decoder) skipSpace() {
	for d.pos < len(d.buf) {
		switch d.buf[d.pos] {
		case ' ', '\t', '\n', '\r':
			d.pos++
		default:
			return
		}
	}
}

// peek returns the byte at d.pos, or 0 at the end of the input.
func (d *decoder) peek() byte {
	if d.pos < len(d.buf) {
		return d.buf[d.pos]
	}
	return 0
}

// parse checks that d.buf is one JSON value and notes the envelope's fields.
func (d *decoder) parse() error {
	d.skipSpace()
	var err error
	if d.peek() == '{' {
		d.top = object
		err = d.object(1, inEnvelope)
	} else {
		var v span
		v, err = d.value(0)
		d.top = v.kind
	}
	if err != nil {
		return err
	}
	d.skipSpace()
	if d.pos < len(d.buf) {
		return d.syntaxError("after the top-level value")
	}
	return nil
}

// Where an object is, which says which of its fields a decoder notes.
type level int

const (
	inEnvelope level = iota // the envelope: "id" and "msg"
	inMsg                   // its "msg": "namespace", "topic", "binary", "data"
	elsewhere               // nothing
)

// object parses the object at d.pos, at nesting depth depth, and notes the
// fields it holds at level.
func (d *decoder) object(depth int, at level) error {
	if depth > maxDepth {
		return malformed("nested too deeply at offset %d", d.pos)
	}
	d.pos++ // '{'
	d.skipSpace()
	if d.peek() == '}' {
		d.pos++
		return nil
	}
	for {
		if d.peek() != '"' {
			return d.syntaxError("looking for the beginning of an object key")
		}
		key, err := d.string()
		if err != nil {
			return err
		}
		field := fieldNone
		if at != elsewhere {
			field = d.field(key, at)
		}
		d.skipSpace()
		if d.peek() != ':' {
			return d.syntaxError("after an object key")
		}
		d.pos++
		d.skipSpace()
		if field == fieldMsg && d.peek() == '{' {
			// The last "msg" counts: forget what an earlier one held.
			for f := fieldNamespace; f <= fieldData; f++ {
				d.fields[f] = span{}
			}
			start := d.pos
			if err := d.object(depth+1, inMsg); err != nil {
				return err
			}
			d.fields[fieldMsg] = span{kind: object, start: start, end: d.pos}
		} else {
			v, err := d.value(depth)
			if err != nil {
				return err
			}
			if field != fieldNone {
				d.fields[field] = v
			}
		}
		d.skipSpace()
		switch d.peek() {
		case ',':
			d.pos++
			d.skipSpace()
		case '}':
			d.pos++
			return nil
		default:
			return d.syntaxError("after an object value")
		}
	}
}

// field returns the envelope field that key names at level at, or fieldNone.
func (d *decoder) field(key span, at level) int {
	name := d.buf[key.start:key.end]
	if key.escaped {
		// An escaped key ("\u0069d") names the field its unescaped text
		// names. A key that long names no field.
		if key.end-key.start > 6*len("namespace") {
			return fieldNone
		}
		var scratch [6 * len("namespace")]byte
		name = appendUnquoted(scratch[:0], name, !key.nonASCII)
	}
	if at == inEnvelope {
		switch string(name) {
		case "id":
			return fieldID
		case "msg":
			return fieldMsg
		}
		return fieldNone
	}
	switch string(name) {
	case "namespace":
		return fieldNamespace
	case "topic":
		return fieldTopic
	case "binary":
		return fieldBinary
	case "data":
		return fieldData
	}
	return fieldNone
}

// value parses the value at d.pos, within containers nested depth deep.
func (d *decoder) value(depth int) (span, error) {
	start := d.pos
	switch c := d.peek(); {
	case c == '"':
		return d.string()
	case c == '{':
		err := d.object(depth+1, elsewhere)
		return span{kind: object, start: start, end: d.pos}, err
	case c == '[':
		err := d.array(depth + 1)
		return span{kind: array, start: start, end: d.pos}, err
	case c == '-' || '0' <= c && c <= '9':
		err := d.number()
		return span{kind: number, start: start, end: d.pos}, err
	case c == 't':
		return span{kind: trueLit, start: start, end: start + 4}, d.literal("true")
	case c == 'f':
		return span{kind: falseLit, start: start, end: start + 5}, d.literal("false")
	case c == 'n':
		return span{kind: null, start: start, end: start + 4}, d.literal("null")
	}
	return span{}, d.syntaxError("looking for the beginning of a value")
}

func (d *decoder) array(depth int) error {
	if depth > maxDepth {
		return malformed("nested too deeply at offset %d", d.pos)
	}
	d.pos++ // '['
	d.skipSpace()
	if d.peek() == ']' {
		d.pos++
		return nil
	}
	for {
		if _, err := d.value(depth); err != nil {
			return err
		}
		d.skipSpace()
		switch d.peek() {
		case ',':
			d.pos++
			d.skipSpace()
		case ']':
			d.pos++
			return nil
		default:
			return d.syntaxError("after an array element")
		}
	}
}

func (d *decoder) literal(lit string) error {
	for i := 0; i < len(lit); i++ {
		if d.peek() != lit[i] {
			return d.syntaxError("in literal " + lit)
		}
		d.pos++
	}
	return nil
}

// number parses -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (d *decoder) number() error {
	if d.peek() == '-' {
		d.pos++
	}
	switch c := d.peek(); {
	case c == '0':
		d.pos++
	case '1' <= c && c <= '9':
		d.digits()
	default:
		return d.syntaxError("in numeric literal")
	}
	if d.peek() == '.' {
		d.pos++
		if !isDigit(d.peek()) {
			return d.syntaxError("after decimal point in numeric literal")
		}
		d.digits()
	}
	if c := d.peek(); c == 'e' || c == 'E' {
		d.pos++
		if c := d.peek(); c == '+' || c == '-' {
			d.pos++
		}
		if !isDigit(d.peek()) {
			return d.syntaxError("in exponent of numeric literal")
		}
		d.digits()
	}
	return nil
}

func (d *decoder) digits() {
	for isDigit(d.peek()) {
		d.pos++
	}
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// string parses the string at d.pos and returns its content.
func (d *decoder) string() (span, error) {
	d.pos++ // '"'
	v := span{kind: str, start: d.pos}
	buf := d.buf
	var high uint64 // the bytes skipped eight at a time, or-ed
	for i := d.pos; i < len(buf); {
		if i+8 <= len(buf) {
			// Skip up to the first quote, backslash or control character.
			x := binary.LittleEndian.Uint64(buf[i:])
			m := special8(x, false)
			if m == 0 {
				high |= x
				i += 8
				continue
			}
			n := bits.TrailingZeros64(m) / 8
			high |= x & (1<<(8*n) - 1)
			i += n
		}
		c := buf[i]
		switch {
		case c == '"':
			v.end = i
			v.nonASCII = v.nonASCII || high&highs != 0
			d.pos = i + 1
			return v, nil
		case c == '\\':
			v.escaped = true
			if i+1 >= len(buf) {
				d.pos = len(buf)
				return v, d.syntaxError("in string escape code")
			}
			switch buf[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				for j := i + 2; j < i+6; j++ {
					if j >= len(buf) || !isHex(buf[j]) {
						d.pos = j
						return v, d.syntaxError("in \\u hexadecimal character escape")
					}
				}
				i += 6
			default:
				d.pos = i + 1
				return v, d.syntaxError("in string escape code")
			}
		case c < ' ':
			d.pos = i
			return v, d.syntaxError("in string literal")
		case c >= utf8.RuneSelf:
			v.nonASCII = true
			i++
		default:
			i++
		}
	}
	d.pos = len(buf)
	return v, d.syntaxError("in string literal")
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// appendUnquoted appends the text of the JSON string content s, which string
// has checked, to dst. Escapes are resolved; a \u escape of a lone surrogate
// and each byte that is not part of a valid UTF-8 sequence become U+FFFD, as
// in encoding/json. ascii says that s holds ASCII only.
func appendUnquoted(dst, s []byte, ascii bool) []byte {
	for i := 0; i < len(s); {
		c := s[i]
		if c == '\\' {
			switch c := s[i+1]; c {
			case 'b':
				dst = append(dst, '\b')
			case 'f':
				dst = append(dst, '\f')
			case 'n':
				dst = append(dst, '\n')
			case 'r':
				dst = append(dst, '\r')
			case 't':
				dst = append(dst, '\t')
			case 'u':
				r := hex4(s[i+2:])
				i += 6
				if utf16.IsSurrogate(r) {
					if i+6 <= len(s) && s[i] == '\\' && s[i+1] == 'u' {
						if dec := utf16.DecodeRune(r, hex4(s[i+2:])); dec != utf8.RuneError {
							r = dec
							i += 6
						} else {
							r = utf8.RuneError
						}
					} else {
						r = utf8.RuneError
					}
				}
				dst = utf8.AppendRune(dst, r)
				continue
			default: // '"', '\\', '/'
				dst = append(dst, c)
			}
			i += 2
			continue
		}
		// Copy the text up to the next escape.
		j := bytes.IndexByte(s[i:], '\\')
		if j < 0 {
			j = len(s)
		} else {
			j += i
		}
		if ascii {
			dst = append(dst, s[i:j]...)
		} else {
			dst = appendValid(dst, s[i:j])
		}
		i = j
	}
	return dst
}

// appendValid appends s to dst with each byte that is not part of a valid
// UTF-8 sequence replaced by U+FFFD.
func appendValid(dst, s []byte) []byte {
	if utf8.Valid(s) {
		return append(dst, s...)
	}
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRune(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = utf8.AppendRune(dst, utf8.RuneError)
		} else {
			dst = append(dst, s[i:i+size]...)
		}
		i += size
	}
	return dst
}

// hex4 returns the value of the four hexadecimal digits that s begins with.
func hex4(s []byte) rune {
	var r rune
	for _, c := range s[:4] {
		switch {
		case c <= '9':
			c -= '0'
		case c <= 'F':
			c -= 'A' - 10
		default:
			c -= 'a' - 10
		}
		r = r<<4 | rune(c)
	}
	return r
}

// appendText appends the text of the string v to dst.
func (d *decoder) appendText(dst []byte, v span) []byte {
	s := d.buf[v.start:v.end]
	switch {
	case v.escaped:
		return appendUnquoted(dst, s, !v.nonASCII)
	case v.nonASCII:
		return appendValid(dst, s)
	}
	return append(dst, s...)
}

// require checks that field f, named name, is a value of kind k.
func (d *decoder) require(f int, name string, k kind) error {
	switch got := d.fields[f].kind; got {
	case k:
		return nil
	case missing:
		return malformed("%s is missing", name)
	default:
		return malformed("%s is not a%s %s (got %s)", name, article(k), k, got)
	}
}

func article(k kind) string {
	if k == object || k == array {
		return "n"
	}
	return ""
}

// build returns the envelope that parse found.
func (d *decoder) build() (id string, m edge.Message, err error) {
	if d.top != object {
		return "", m, malformed("not a JSON object (got %s)", d.top)
	}
	if err := d.require(fieldID, "id", str); err != nil {
		return "", m, err
	}
	if err := d.require(fieldMsg, "msg", object); err != nil {
		return "", m, err
	}
	if err := d.require(fieldNamespace, "msg.namespace", str); err != nil {
		return "", m, err
	}
	if err := d.require(fieldTopic, "msg.topic", str); err != nil {
		return "", m, err
	}
	if err := d.require(fieldData, "msg.data", str); err != nil {
		return "", m, err
	}

	data := d.fields[fieldData]
	if d.truthy(d.fields[fieldBinary]) {
		src := d.buf[data.start:data.end]
		if data.escaped {
			src = appendUnquoted(nil, src, !data.nonASCII)
		}
		b, err := forgivingBase64(src)
		if err != nil {
			return "", edge.Message{}, malformed("msg.data is not valid base64: %v", err)
		}
		m.Data = edge.Data{Bytes: b, Binary: true}
	} else {
		m.Data = edge.Data{Bytes: d.appendText(make([]byte, 0, data.end-data.start), data)}
	}

	// The three strings share one allocation.
	var scratch [128]byte
	b := d.appendText(scratch[:0], d.fields[fieldID])
	i := len(b)
	b = d.appendText(b, d.fields[fieldNamespace])
	j := len(b)
	b = d.appendText(b, d.fields[fieldTopic])
	s := string(b)
	return s[:i], edge.Message{Namespace: s[i:j], Topic: s[j:], Data: m.Data}, nil
}

// truthy reports whether v is a value JavaScript takes for true, as crossws
// reads "binary": true, a non-zero number, a non-empty string, an object or
// an array. A missing value is false.
func (d *decoder) truthy(v span) bool {
	switch v.kind {
	case trueLit, object, array:
		return true
	case str:
		return v.end > v.start
	case number:
		f, _ := strconv.ParseFloat(string(d.buf[v.start:v.end]), 64) // out of range: ±Inf or 0, as in JavaScript
		return f != 0
	}
	return false
}

// forgivingBase64 decodes src as the browser's atob does, which crossws
// uses: ASCII white space is ignored, and so is the padding, which may be
// left out; bits past the last byte need not be zero.
func forgivingBase64(src []byte) ([]byte, error) {
	clean := make([]byte, 0, len(src))
	for _, c := range src {
		switch c {
		case ' ', '\t', '\n', '\f', '\r':
		default:
			clean = append(clean, c)
		}
	}
	if len(clean)%4 == 0 {
		clean = bytes.TrimSuffix(clean, []byte("="))
		clean = bytes.TrimSuffix(clean, []byte("="))
	}
	if len(clean)%4 == 1 {
		return nil, errors.New("its length is not that of base64")
	}
	b := make([]byte, base64.RawStdEncoding.DecodedLen(len(clean)))
	n, err := base64.RawStdEncoding.Decode(b, clean)
	if err != nil {
		return nil, err
	}
	return b[:n], nil
}
