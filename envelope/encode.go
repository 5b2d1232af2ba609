package envelope

import (
	"math/bits"
	"unicode/utf8"
)

// plain reports the ASCII bytes that a JSON string holds as they are: every
// byte but the control characters, '"' and '\\'.
var plain = func() (t [utf8.RuneSelf]bool) {
	for c := ' '; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

const hexDigits = "0123456789abcdef"

// appendQuoted appends s to dst as a JSON string, escaped the way
// JSON.stringify escapes it. Each byte of s that is not part of a valid UTF-8
// sequence is written as U+FFFD, as encoding/json does.
func appendQuoted[S ~string | ~[]byte](dst []byte, s S) []byte {
	dst = append(dst, '"')
	start := 0 // s[start:i] is yet to be copied as it is
	for i := 0; i < len(s); {
		if i+8 <= len(s) {
			// Skip up to the first byte that is not plain ASCII.
			m := special8(load64(s, i), true)
			if m == 0 {
				i += 8
				continue
			}
			i += bits.TrailingZeros64(m) / 8
		}
		c := s[i]
		if c < utf8.RuneSelf {
			if plain[c] {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(string(s[i:min(i+utf8.UTFMax, len(s))]))
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = utf8.AppendRune(dst, utf8.RuneError)
			i++
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// Word-at-a-time tests on eight bytes packed in a uint64.
const (
	ones  = 0x0101010101010101 // 0x01 in every byte
	highs = 0x8080808080808080 // 0x80 in every byte
)

// special8 returns a mask of the bytes in x that are a control character, '"'
// or '\\', or, when nonASCII is true, outside ASCII: the bytes that a JSON
// string does not simply hold as they are. The mask holds 0x80 in the lowest
// such byte, and maybe in later ones; it is zero when there is none.
func special8(x uint64, nonASCII bool) uint64 {
	quote := x ^ ones*'"'
	backslash := x ^ ones*'\\'
	// Bytes below n (n <= 0x80) have their high bit set in x-ones*n, and
	// so do bytes of 0x80 and above, which &^x clears. A borrow only
	// flags bytes above a byte that is rightly flagged.
	m := (x-ones*' ')&^x | (quote-ones)&^quote | (backslash-ones)&^backslash
	if nonASCII {
		m |= x
	}
	return m & highs
}

// load64 returns s[i:i+8] as a little-endian uint64.
func load64[S ~string | ~[]byte](s S, i int) uint64 {
	b := s[i : i+8]
	return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
		uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
}
