package natssync

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// hashedTokenLen is the length of a hashed token.
var hashedTokenLen = 1 + base64.RawURLEncoding.EncodedLen(sha256.Size)

// errHashed is returned by parseToken for a hashed token.
var errHashed = errors.New("the token is the hash of a long name")

// parseToken returns the name whose subjectToken is token. It returns an
// error wrapping errHashed for a hashed token, whose name cannot be
// recovered, and an error for what subjectToken never yields.
func parseToken(token string) (string, error) {
	switch {
	case token == emptyToken:
		return "", nil
	case token == "":
		return "", errors.New("natssync: empty subject token")
	case token[0] == hashMark:
		if len(token) != hashedTokenLen {
			return "", fmt.Errorf("natssync: subject token %q: a hashed token is %d bytes", token, hashedTokenLen)
		}
		if _, err := base64.RawURLEncoding.DecodeString(token[1:]); err != nil {
			return "", fmt.Errorf("natssync: subject token %q: %w", token, err)
		}
		return "", fmt.Errorf("natssync: subject token %q: %w", token, errHashed)
	case len(token) > maxTokenBytes:
		return "", fmt.Errorf("natssync: subject token of %d bytes: longer than %d", len(token), maxTokenBytes)
	}
	b := make([]byte, 0, len(token))
	for i := 0; i < len(token); i++ {
		c := token[i]
		switch {
		case tokenSafe(c):
			b = append(b, c)
		case c == '%' && i+2 < len(token) && isUpperHex(token[i+1]) && isUpperHex(token[i+2]):
			v := unhex(token[i+1])<<4 | unhex(token[i+2])
			if tokenSafe(v) {
				return "", fmt.Errorf("natssync: subject token %q: %%%c%c escapes a byte that stands for itself", token, token[i+1], token[i+2])
			}
			b = append(b, v)
			i += 2
		default:
			return "", fmt.Errorf("natssync: subject token %q: byte %d (%q) is not part of an escaped name", token, i, c)
		}
	}
	return string(b), nil
}

func isUpperHex(c byte) bool { return '0' <= c && c <= '9' || 'A' <= c && c <= 'F' }

func unhex(c byte) byte {
	if c <= '9' {
		return c - '0'
	}
	return c - 'A' + 10
}

func TestSubjectTokens(t *testing.T) {
	long := strings.Repeat("a", maxTokenBytes+1)
	sum := sha256.Sum256([]byte(long))
	for _, tc := range []struct{ name, token string }{
		{"", "~"},
		{"lobby", "lobby"},
		{"room_1-a", "room_1-a"},
		{"/_ws", "%2F_ws"},
		{"a.b", "a%2Eb"},
		{"*", "%2A"},
		{">", "%3E"},
		{"a b\t\r\n", "a%20b%09%0D%0A"},
		{"~", "%7E"},
		{"%", "%25"},
		{"%2E", "%252E"},
		{"ü", "%C3%BC"},
		{"\x00\xff", "%00%FF"},
		{strings.Repeat("a", maxTokenBytes), strings.Repeat("a", maxTokenBytes)},
		{strings.Repeat(".", maxTokenBytes/3), strings.Repeat("%2E", maxTokenBytes/3)},
		{long, "~" + base64.RawURLEncoding.EncodeToString(sum[:])},
		{strings.Repeat(".", maxTokenBytes/3+1), "~"}, // hashed: checked by prefix below
	} {
		got := subjectToken(tc.name)
		if tc.token == "~" && tc.name != "" {
			if len(got) != hashedTokenLen || got[0] != '~' {
				t.Errorf("subjectToken(%q) = %q, want a hashed token", tc.name, got)
			}
			continue
		}
		if got != tc.token {
			t.Errorf("subjectToken(%q) = %q, want %q", tc.name, got, tc.token)
		}
	}
	if got, want := subject("app.chat", "/_ws", "lobby"), "app.chat.%2F_ws.lobby"; got != want {
		t.Errorf("subject = %q, want %q", got, want)
	}
	if got, want := subject("chat", "", "a.b"), "chat.~.a%2Eb"; got != want {
		t.Errorf("subject = %q, want %q", got, want)
	}
}

func TestValidateChannel(t *testing.T) {
	for _, ok := range []string{"chat", "app.chat", "a-b_c.D9", "%7E", strings.Repeat("c", MaxChannelBytes)} {
		if err := validateChannel(ok); err != nil {
			t.Errorf("validateChannel(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{
		"", ".", "a.", ".a", "a..b", "*", "a.*", ">", "a.>", "a*b", "a>b", "a b", "a\tb", "a\nb",
		"a\x00b", "a\x7fb", "ü", strings.Repeat("c", MaxChannelBytes+1),
	} {
		if err := validateChannel(bad); err == nil {
			t.Errorf("validateChannel(%q) returned no error", bad)
		}
	}
}

// FuzzSubjectToken checks that every name has a valid, literal subject
// token, that an escaped token gives its name back (so distinct names never
// share one), and that only names too long to escape are hashed.
func FuzzSubjectToken(f *testing.F) {
	for _, s := range []string{"", "lobby", "/_ws", "a.b", "*", ">", " ", "~", "%", "%2E", "ü", "\xff",
		strings.Repeat("x", maxTokenBytes), strings.Repeat("x", maxTokenBytes+1), strings.Repeat("%", 43)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		token := subjectToken(name)
		if !validToken(token) {
			t.Fatalf("subjectToken(%q) = %q: not a valid subject token", name, token)
		}
		if len(token) > maxTokenBytes {
			t.Fatalf("subjectToken(%q) is %d bytes, more than %d", name, len(token), maxTokenBytes)
		}
		if validateChannel("c."+token) != nil {
			t.Fatalf("subjectToken(%q) = %q does not make a valid subject", name, token)
		}
		back, err := parseToken(token)
		if errors.Is(err, errHashed) {
			escaped := 0
			for i := 0; i < len(name); i++ {
				if escaped++; !tokenSafe(name[i]) {
					escaped += 2
				}
			}
			if escaped <= maxTokenBytes {
				t.Fatalf("subjectToken(%q) = %q: hashed, but its escaped form is %d bytes", name, token, escaped)
			}
			return
		}
		if err != nil {
			t.Fatalf("parseToken(subjectToken(%q) = %q): %v", name, token, err)
		}
		if back != name {
			t.Fatalf("parseToken(subjectToken(%q)) = %q", name, back)
		}
		// A token names one name: parsing what parses gives it back.
		if tok := subjectToken(back); tok != token {
			t.Fatalf("subjectToken(parseToken(%q)) = %q", token, tok)
		}
	})
}

// parseToken refuses what subjectToken never writes, so that no two tokens
// stand for one name.
func TestParseTokenRefusesNonCanonicalTokens(t *testing.T) {
	for _, bad := range []string{"", "%", "%2", "%2e", "%61", "a.b", "a b", "~x", "*", strings.Repeat("a", maxTokenBytes+1)} {
		if name, err := parseToken(bad); err == nil {
			t.Errorf("parseToken(%q) = %q, want an error", bad, name)
		}
	}
}
