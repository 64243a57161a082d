package gormstore

import (
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/internal/intern"
	"github.com/txoutbox/txoutbox/outbox"
)

// A raw row that is not what the claim statement returns is an error, never
// a panic or a row with made-up values.
func TestReadRawRowRejectsMalformedRows(t *testing.T) {
	good := func() [][]byte {
		return [][]byte{
			{0, 0, 0, 0, 0, 0, 0, 7}, []byte("uuid"), []byte("topic"), []byte("key"),
			[]byte("payload"), []byte(`{"a":"b"}`), {0, 0, 0, 2},
		}
	}
	var r outbox.Row
	require.NoError(t, readRawRow(good(), &r, intern.Table{}))
	require.Equal(t, outbox.Row{ID: 7, UUID: "uuid", Topic: "topic", PartitionKey: "key",
		Payload: []byte("payload"), Metadata: []byte(`{"a":"b"}`), Attempts: 2}, r)

	for name, mutate := range map[string]func(v [][]byte) [][]byte{
		"too few columns":    func(v [][]byte) [][]byte { return v[:6] },
		"short id":           func(v [][]byte) [][]byte { v[0] = v[0][:4]; return v },
		"NULL id":            func(v [][]byte) [][]byte { v[0] = nil; return v },
		"NULL uuid":          func(v [][]byte) [][]byte { v[1] = nil; return v },
		"NULL payload":       func(v [][]byte) [][]byte { v[4] = nil; return v },
		"NULL metadata":      func(v [][]byte) [][]byte { v[5] = nil; return v },
		"long attempts":      func(v [][]byte) [][]byte { v[6] = append(v[6], 0); return v },
		"NULL attempts":      func(v [][]byte) [][]byte { v[6] = nil; return v },
		"extra column":       func(v [][]byte) [][]byte { return append(v, nil) },
		"NULL partition key": func(v [][]byte) [][]byte { v[3] = nil; return v },
	} {
		require.Error(t, readRawRow(mutate(good()), &r, intern.Table{}), name)
	}
}
