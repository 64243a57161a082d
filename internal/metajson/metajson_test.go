package metajson_test

import (
	"encoding/json"
	"testing"

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
