package gormstore

import (
	"encoding/json"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
)

// appendMetadata must produce JSON that decodes to the same map as the
// input (and that is valid JSON), for any keys and values.
func FuzzAppendMetadata(f *testing.F) {
	f.Add("name", "OrderPlaced", "k\"\\", "v\n\t\x01\u2028é")
	f.Add("", "", "\xff", "\xc3")
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2 string) {
		md := message.Metadata{k1: v1, k2: v2}
		got := appendMetadata(nil, md)
		var back map[string]string
		require.NoError(t, json.Unmarshal(got, &back), "%s", got)
		want, err := json.Marshal(map[string]string(md))
		require.NoError(t, err)
		var wantBack map[string]string
		require.NoError(t, json.Unmarshal(want, &wantBack))
		require.Equal(t, wantBack, back)
	})
}
