package outbox

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/internal/intern"
)

// decodeMetadata must agree with encoding/json on every input: the same
// map for valid objects of strings, an error where encoding/json fails.
func FuzzDecodeMetadata(f *testing.F) {
	for _, s := range []string{
		`{}`, ` { } `, `{"a":"b"}`, `{"name": "OrderPlaced", "created_at": "2026-11-27T14:21:48Z"}`,
		`{"a":"\"q\\u00e9\ud83d\ude00\n"}`, `{"a":"\ud800"}`, `{"a":1}`, `{"a":null}`, `[]`, `null`,
		`{"a":"b",}`, `{"a":"b"} x`, `{"a":"b","a":"c"}`, "{\"a\":\"\xff\"}", `{"a":"\u00"}`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var want map[string]string
		wantErr := json.Unmarshal(data, &want)
		got := map[string]string{}
		err := decodeMetadata(data, got, nil)
		if wantErr != nil {
			require.Error(t, err, "encoding/json rejects %q", data)
			return
		}
		require.NoError(t, err, "%q", data)
		if want == nil {
			want = map[string]string{}
		}
		require.Equal(t, want, got, "%q", data)
		// The same through an interner, twice: the second decode takes
		// its strings from the first.
		in := intern.Table{}
		for range 2 {
			got := map[string]string{}
			require.NoError(t, decodeMetadata(data, got, in), "%q", data)
			require.Equal(t, want, got, "%q, interned", data)
		}
	})
}

func BenchmarkDecodeMetadataFlat(b *testing.B) {
	raw := []byte(`{"name": "OrderPlaced", "command": "PlaceOrder", "created_at": "2026-11-27T14:21:48.123456Z", "causation_id": "0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "partition_key": "customer-07", "correlation_id": "0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"}`)
	b.ReportAllocs()
	in := intern.Table{}
	for b.Loop() {
		m := make(map[string]string, 8)
		if err := decodeMetadata(raw, m, in); err != nil {
			b.Fatal(err)
		}
	}
}
