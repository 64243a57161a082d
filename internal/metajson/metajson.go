// Package metajson writes Watermill metadata in its stored form, a JSON
// object of strings with sorted keys: the form of the outbox table's
// metadata column and of [outbox.Row.Metadata].
package metajson

import (
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill/message"
)

// Append appends md as a JSON object of strings with sorted keys, the
// same bytes encoding/json writes for a map[string]string (without its
// HTML escaping, which JSON does not need). It runs once per event, so it
// avoids encoding/json's reflection.
func Append(b []byte, md message.Metadata) []byte {
	if len(md) == 0 {
		return append(b, "{}"...)
	}
	// The encoder sets six keys; up to 8 need no allocation.
	var small [8]metadataPair
	pairs := small[:0]
	size := 2 // {}
	for k, v := range md {
		pairs = append(pairs, metadataPair{k, v})
		size += len(k) + len(v) + 6 // "k":"v",
	}
	slices.SortFunc(pairs, func(a, b metadataPair) int { return strings.Compare(a.key, b.key) })
	// One allocation at most, unless escapes make the text longer.
	b = slices.Grow(b, size)
	b = append(b, '{')
	for i, p := range pairs {
		if i > 0 {
			b = append(b, ',')
		}
		b = AppendString(b, p.key)
		b = append(b, ':')
		b = AppendString(b, p.value)
	}
	return append(b, '}')
}

// metadataPair is a metadata key and its value.
type metadataPair struct{ key, value string }

// plain tells the ASCII bytes a JSON string holds as they are.
var plain = func() (t [utf8.RuneSelf]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// AppendString appends s as a JSON string. Invalid UTF-8 becomes U+FFFD,
// as encoding/json writes it. Runs of bytes that need no escape are
// copied at once.
func AppendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if plain[c] {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigit(c>>4), hexDigit(c&0xf))
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...) // invalid UTF-8, as encoding/json does
			start = i + 1
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

func hexDigit(n byte) byte { return "0123456789abcdef"[n] }
