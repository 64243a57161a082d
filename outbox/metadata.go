package outbox

import (
	"encoding/json"
	"errors"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/txoutbox/txoutbox/internal/intern"
)

var errNotFlat = errors.New("not a flat JSON object of strings")

// internValue tells the metadata keys whose values repeat across rows.
func internValue(key string) bool {
	switch key {
	case MetadataName, MetadataCommand, MetadataPartitionKey:
		return true
	}
	return false
}

// decodeMetadata decodes a JSON object of strings, the stored form of
// Watermill metadata, into m. It is the relay's per-row hot path: a
// hand-written scanner for the flat shape the store writes, with
// encoding/json as the reference for everything else (and for errors).
// in, when not nil, shares strings with earlier rows.
func decodeMetadata(data []byte, m map[string]string, in intern.Table) error {
	if err := decodeFlat(data, m, in); err == nil {
		return nil
	}
	clear(m)
	return json.Unmarshal(data, &m)
}

func decodeFlat(d []byte, m map[string]string, in intern.Table) error {
	i := skipSpace(d, 0)
	if i >= len(d) || d[i] != '{' {
		return errNotFlat
	}
	i = skipSpace(d, i+1)
	if i < len(d) && d[i] == '}' {
		return trailing(d, i+1)
	}
	for {
		k, next, err := readString(d, i, in)
		if err != nil {
			return err
		}
		i = skipSpace(d, next)
		if i >= len(d) || d[i] != ':' {
			return errNotFlat
		}
		vin := in
		if !internValue(k) {
			vin = nil
		}
		v, next, err := readString(d, skipSpace(d, i+1), vin)
		if err != nil {
			return err
		}
		m[k] = v
		i = skipSpace(d, next)
		if i >= len(d) {
			return errNotFlat
		}
		switch d[i] {
		case ',':
			i = skipSpace(d, i+1)
		case '}':
			return trailing(d, i+1)
		default:
			return errNotFlat
		}
	}
}

func trailing(d []byte, i int) error {
	if skipSpace(d, i) != len(d) {
		return errNotFlat
	}
	return nil
}

func skipSpace(d []byte, i int) int {
	for i < len(d) && (d[i] == ' ' || d[i] == '\t' || d[i] == '\n' || d[i] == '\r') {
		i++
	}
	return i
}

// readString reads the JSON string starting at d[i] and returns it and
// the index after its closing quote; a string without escapes comes from
// in when in is not nil.
func readString(d []byte, i int, in intern.Table) (string, int, error) {
	if i >= len(d) || d[i] != '"' {
		return "", 0, errNotFlat
	}
	start := i + 1
	// Fast path: no escapes, valid UTF-8, no control characters.
	for j := start; j < len(d); j++ {
		c := d[j]
		switch {
		case c == '"':
			s := d[start:j]
			if !utf8.Valid(s) {
				return "", 0, errNotFlat
			}
			if in != nil {
				return in.String(s), j + 1, nil
			}
			return string(s), j + 1, nil
		case c == '\\':
			return readEscaped(d, start)
		case c < 0x20:
			return "", 0, errNotFlat
		}
	}
	return "", 0, errNotFlat
}

// readEscaped reads a JSON string with escapes whose content starts at
// d[start].
func readEscaped(d []byte, start int) (string, int, error) {
	buf := make([]byte, 0, 32)
	for j := start; j < len(d); {
		c := d[j]
		switch {
		case c == '"':
			if !utf8.Valid(buf) {
				return "", 0, errNotFlat
			}
			return string(buf), j + 1, nil
		case c < 0x20:
			return "", 0, errNotFlat
		case c != '\\':
			buf = append(buf, c)
			j++
			continue
		}
		if j+1 >= len(d) {
			return "", 0, errNotFlat
		}
		switch e := d[j+1]; e {
		case '"', '\\', '/':
			buf = append(buf, e)
		case 'b':
			buf = append(buf, '\b')
		case 'f':
			buf = append(buf, '\f')
		case 'n':
			buf = append(buf, '\n')
		case 'r':
			buf = append(buf, '\r')
		case 't':
			buf = append(buf, '\t')
		case 'u':
			r, n, ok := readUnicode(d, j)
			if !ok {
				return "", 0, errNotFlat
			}
			buf = utf8.AppendRune(buf, r)
			j += n
			continue
		default:
			return "", 0, errNotFlat
		}
		j += 2
	}
	return "", 0, errNotFlat
}

// readUnicode reads \uXXXX (and a following low surrogate) at d[j] and
// returns the rune and the bytes consumed.
func readUnicode(d []byte, j int) (rune, int, bool) {
	hex := func(at int) (rune, bool) {
		if at+6 > len(d) || d[at] != '\\' || d[at+1] != 'u' {
			return 0, false
		}
		v, err := strconv.ParseUint(string(d[at+2:at+6]), 16, 16)
		return rune(v), err == nil
	}
	r, ok := hex(j)
	if !ok {
		return 0, 0, false
	}
	if utf16.IsSurrogate(r) {
		if r2, ok := hex(j + 6); ok {
			if dec := utf16.DecodeRune(r, r2); dec != utf8.RuneError {
				return dec, 12, true
			}
		}
		return utf8.RuneError, 6, true // as encoding/json does
	}
	return r, 6, true
}
