// Package metajson writes Watermill metadata in its stored form, a JSON
// object of strings with sorted keys: the form of the outbox table's
// metadata column and of [outbox.Row.Metadata].
package metajson

import (
	"slices"
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
	keys := make([]string, 0, len(md))
	for k := range md {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b = append(b, '{')
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = AppendString(b, k)
		b = append(b, ':')
		b = AppendString(b, md[k])
	}
	return append(b, '}')
}

// AppendString appends s as a JSON string. Invalid UTF-8 becomes U+FFFD,
// as encoding/json writes it.
func AppendString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c == '\n':
				b = append(b, '\\', 'n')
			case c == '\r':
				b = append(b, '\\', 'r')
			case c == '\t':
				b = append(b, '\\', 't')
			case c < 0x20:
				b = append(b, '\\', 'u', '0', '0', hexDigit(c>>4), hexDigit(c&0xf))
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, `\ufffd`...) // invalid UTF-8, as encoding/json does
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}

func hexDigit(n byte) byte { return "0123456789abcdef"[n] }
