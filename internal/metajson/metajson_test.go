package metajson_test

import (
	"encoding/json"
	"testing"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/internal/metajson"
)

// Append must produce JSON that decodes to the same map as the input (and
// that is valid JSON), for any keys and values.
func FuzzAppend(f *testing.F) {
	f.Add("name", "OrderPlaced", "k\"\\", "v\n\t\x01\u2028é")
	f.Add("", "", "\xff", "\xc3")
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2 string) {
		md := message.Metadata{k1: v1, k2: v2}
		got := metajson.Append(nil, md)
		var back map[string]string
		require.NoError(t, json.Unmarshal(got, &back), "%s", got)
		want, err := json.Marshal(map[string]string(md))
		require.NoError(t, err)
		var wantBack map[string]string
		require.NoError(t, json.Unmarshal(want, &wantBack))
		require.Equal(t, wantBack, back)
	})
}

func TestAppendSortsKeys(t *testing.T) {
	got := metajson.Append(nil, message.Metadata{"b": "2", "a": "1"})
	require.Equal(t, `{"a":"1","b":"2"}`, string(got))
	require.Equal(t, `{}`, string(metajson.Append(nil, nil)))
}

// AppendString writes the bytes of a byte-at-a-time reference
// encoder: runs copied at once change nothing.
func FuzzAppendJSONStringBytes(f *testing.F) {
	for _, s := range []string{"", "OrderPlaced", "k\"\\", "v\n\t\x01\u2028é", "\xff", "\xc3", "a\xffb", "é\"\x1f\x7f€", "2026-11-27T14:21:48.123456789Z"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		require.Equal(t, string(referenceJSONString(nil, s)), string(metajson.AppendString(nil, s)))
		prefix := []byte("x")
		require.Equal(t, "x"+string(referenceJSONString(nil, s)), string(metajson.AppendString(prefix, s)))
	})
}

// referenceJSONString encodes one byte or rune at a time: \" \\ \n \r \t,
// \u00XX for other control bytes, \ufffd for invalid UTF-8, the rest as is.
func referenceJSONString(b []byte, s string) []byte {
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
				b = append(b, '\\', 'u', '0', '0', "0123456789abcdef"[c>>4], "0123456789abcdef"[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}

// Metadata with more keys than Append's stack room is written the
// same way.
func TestAppendManyKeys(t *testing.T) {
	md := message.Metadata{}
	for i := range 20 {
		md[string(rune('t'-i))+"k"] = "v"
	}
	got := metajson.Append(nil, md)
	want, err := json.Marshal(map[string]string(md))
	require.NoError(t, err)
	require.Equal(t, string(want), string(got))
}
