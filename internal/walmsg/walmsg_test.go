package walmsg_test

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/internal/walmsg"
	"github.com/txoutbox/txoutbox/outbox"
)

func record(id, topic, key, payload string, md message.Metadata) outbox.Record {
	m := message.NewMessage(id, []byte(payload))
	m.Metadata = md
	return outbox.Record{Topic: topic, PartitionKey: key, Message: m}
}

func sampleRecords() []outbox.Record {
	return []outbox.Record{
		record("0190b8e5-3c4f-7a1b-8c2d-0123456789ab", "orders", "c-1", `{"id":1}`,
			message.Metadata{"name": "OrderPlaced", "partition_key": "c-1", "created_at": "2026-12-04T18:00:00Z"}),
		record("not-a-uuid", "orders", "", "", nil),
		record("0190B8E5-3C4F-7A1B-8C2D-0123456789AB", "t\x00", "k\xff", "\x00\x01", message.Metadata{"": "", "\"": "\n"}),
	}
}

// events returns what Decode should return for records.
func events(records []outbox.Record) []walmsg.Event {
	var out []walmsg.Event
	for _, r := range records {
		e := walmsg.Event{UUID: r.Message.UUID, Topic: r.Topic, PartitionKey: r.PartitionKey, Payload: []byte(r.Message.Payload)}
		for _, k := range sortedKeys(r.Message.Metadata) {
			e.Metadata = append(e.Metadata, walmsg.Pair{Key: k, Value: r.Message.Metadata[k]})
		}
		out = append(out, e)
	}
	return out
}

func sortedKeys(md message.Metadata) []string {
	var keys []string
	for k := range md {
		keys = append(keys, k)
	}
	for i := range keys {
		for j := i + 1; j < len(keys); j++ {
			if keys[j] < keys[i] {
				keys[i], keys[j] = keys[j], keys[i]
			}
		}
	}
	return keys
}

func requireEqualEvents(t *testing.T, want, got []walmsg.Event) {
	t.Helper()
	require.Len(t, got, len(want))
	for i := range want {
		w, g := want[i], got[i]
		require.Equal(t, w.UUID, g.UUID, "event %d", i)
		require.Equal(t, w.Topic, g.Topic, "event %d", i)
		require.Equal(t, w.PartitionKey, g.PartitionKey, "event %d", i)
		require.Equal(t, len(w.Metadata), len(g.Metadata), "event %d", i)
		for j := range w.Metadata {
			require.Equal(t, w.Metadata[j], g.Metadata[j], "event %d pair %d", i, j)
		}
		require.True(t, bytes.Equal(w.Payload, g.Payload), "event %d payload %q != %q", i, w.Payload, g.Payload)
	}
}

func TestRoundTrip(t *testing.T) {
	recs := sampleRecords()
	b, err := walmsg.Encode(recs)
	require.NoError(t, err)
	got, err := walmsg.Decode(b)
	require.NoError(t, err)
	requireEqualEvents(t, events(recs), got)
}

func TestDecodeDoesNotKeepContent(t *testing.T) {
	recs := sampleRecords()
	b, err := walmsg.Encode(recs)
	require.NoError(t, err)
	got, err := walmsg.Decode(b)
	require.NoError(t, err)
	for i := range b {
		b[i] = 0xee
	}
	requireEqualEvents(t, events(recs), got)
}

func TestBinaryUUIDOnlyForCanonicalText(t *testing.T) {
	canonical, err := walmsg.Encode([]outbox.Record{record("0190b8e5-3c4f-7a1b-8c2d-0123456789ab", "t", "", "", nil)})
	require.NoError(t, err)
	upper, err := walmsg.Encode([]outbox.Record{record("0190B8E5-3C4F-7A1B-8C2D-0123456789AB", "t", "", "", nil)})
	require.NoError(t, err)
	require.Equal(t, byte(1), canonical[2], "flags of a canonical UUID")
	require.Equal(t, byte(0), upper[2], "flags of an upper-case UUID")
	require.Less(t, len(canonical), len(upper))
}

// The example in the package documentation.
func TestDocExample(t *testing.T) {
	b, err := walmsg.Encode([]outbox.Record{record("0190b8e5-3c4f-7a1b-8c2d-0123456789ab", "orders", "c-1", "{}", message.Metadata{"name": "X"})})
	require.NoError(t, err)
	want := "0101" + "01" + "0190b8e53c4f7a1b8c2d0123456789ab" + "066f7264657273" + "03632d31" + "01" + "046e616d650158" + "027b7d"
	require.Equal(t, want, hex.EncodeToString(b))
	require.Len(t, b, 41)
}

func TestRowHasTableMetadata(t *testing.T) {
	recs := sampleRecords()
	b, err := walmsg.Encode(recs)
	require.NoError(t, err)
	got, err := walmsg.Decode(b)
	require.NoError(t, err)
	for i, e := range got {
		row := e.Row(int64(i + 1))
		require.Equal(t, int64(i+1), row.ID)
		msg, err := row.Message()
		require.NoError(t, err)
		require.Equal(t, recs[i].Message.UUID, msg.UUID)
		var md map[string]string
		require.NoError(t, json.Unmarshal(row.Metadata, &md), "%s", row.Metadata)
		require.Len(t, md, len(recs[i].Message.Metadata))
	}
	require.Equal(t, `{"created_at":"2026-12-04T18:00:00Z","name":"OrderPlaced","partition_key":"c-1"}`, string(got[0].Row(1).Metadata))
	require.Equal(t, `{}`, string(got[1].Row(2).Metadata))
}

func TestEncodeErrors(t *testing.T) {
	_, err := walmsg.Encode(nil)
	require.ErrorContains(t, err, "no records")
	_, err = walmsg.Encode([]outbox.Record{{Topic: "t"}})
	require.ErrorContains(t, err, "record 0 has no message")
}

func TestDecodeErrors(t *testing.T) {
	valid, err := walmsg.Encode(sampleRecords())
	require.NoError(t, err)
	for n := range len(valid) {
		_, err := walmsg.Decode(valid[:n])
		require.ErrorIs(t, err, walmsg.ErrTruncated, "prefix of %d bytes", n)
	}
	cases := []struct {
		name    string
		content []byte
		want    error
		text    string
	}{
		{"version 0", []byte{0, 0}, walmsg.ErrUnknownVersion, "version 0"},
		{"version 2", append([]byte{2}, valid[1:]...), walmsg.ErrUnknownVersion, "version 2"},
		{"trailing byte", append(bytes.Clone(valid), 0), walmsg.ErrMalformed, "1 bytes after the last event"},
		{"reserved flag", []byte{1, 1, 0x02, 0, 0, 0, 0, 0}, walmsg.ErrMalformed, "reserved flag bits"},
		{"overlong uvarint", []byte{1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, walmsg.ErrMalformed, "uvarint"},
		{"huge count", []byte{1, 0xff, 0xff, 0xff, 0xff, 0x0f}, walmsg.ErrTruncated, "cannot fit"},
		{"keys out of order", []byte{1, 1, 0, 0, 0, 0, 2, 1, 'b', 0, 1, 'a', 0, 0}, walmsg.ErrMalformed, `"a" does not come after "b"`},
		{"repeated key", []byte{1, 1, 0, 0, 0, 0, 2, 1, 'a', 0, 1, 'a', 0, 0}, walmsg.ErrMalformed, "distinct"},
		{"huge string", []byte{1, 1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0, 0, 0}, walmsg.ErrTruncated, "uuid needs 4294967295 bytes"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := walmsg.Decode(c.content)
			require.ErrorIs(t, err, c.want)
			require.ErrorContains(t, err, c.text)
		})
	}
	evs, err := walmsg.Decode([]byte{1, 0})
	require.NoError(t, err, "a frame of no events is valid")
	require.Empty(t, evs)
}

// FuzzDecode: Decode never panics, and what it decodes encodes to a frame
// that decodes the same.
func FuzzDecode(f *testing.F) {
	valid, err := walmsg.Encode(sampleRecords())
	require.NoError(f, err)
	f.Add(valid)
	f.Add([]byte{1, 0})
	f.Add([]byte{1, 1, 0, 0, 0, 0, 2, 1, 'a', 0, 1, 'b', 0, 0})
	f.Fuzz(func(t *testing.T, content []byte) {
		got, err := walmsg.Decode(content)
		if err != nil {
			require.Nil(t, got)
			return
		}
		if len(got) == 0 {
			return // Encode refuses no records
		}
		recs := make([]outbox.Record, len(got))
		for i, e := range got {
			md := message.Metadata{}
			for _, p := range e.Metadata {
				md[p.Key] = p.Value
			}
			recs[i] = record(e.UUID, e.Topic, e.PartitionKey, string(e.Payload), md)
		}
		again, err := walmsg.Encode(recs)
		require.NoError(t, err)
		back, err := walmsg.Decode(again)
		require.NoError(t, err)
		requireEqualEvents(t, got, back)
		for i := range got {
			row := got[i].Row(1)
			var md map[string]string
			require.NoError(t, json.Unmarshal(row.Metadata, &md), "%s", row.Metadata)
		}
	})
}

// FuzzRoundTrip: any two records encode and decode to themselves.
func FuzzRoundTrip(f *testing.F) {
	f.Add("0190b8e5-3c4f-7a1b-8c2d-0123456789ab", "orders", "c-1", "k", "v", []byte("{}"), "x", "", "")
	f.Fuzz(func(t *testing.T, id, topic, key, mk, mv string, payload []byte, id2, topic2, key2 string) {
		recs := []outbox.Record{
			record(id, topic, key, string(payload), message.Metadata{mk: mv, mk + "2": mv}),
			record(id2, topic2, key2, "", nil),
		}
		b, err := walmsg.Encode(recs)
		require.NoError(t, err)
		got, err := walmsg.Decode(b)
		require.NoError(t, err)
		requireEqualEvents(t, events(recs), got)
	})
}

func ExampleDecode() {
	b, _ := walmsg.Encode([]outbox.Record{record("0190b8e5-3c4f-7a1b-8c2d-0123456789ab", "orders", "c-1", "{}", message.Metadata{"name": "X"})})
	events, err := walmsg.Decode(b)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(len(b), events[0].UUID, events[0].Topic, events[0].PartitionKey, events[0].Metadata, string(events[0].Payload))
	// Output: 41 0190b8e5-3c4f-7a1b-8c2d-0123456789ab orders c-1 [{name X}] {}
}

// BenchmarkDecodeRow decodes a frame of 10 typical events and turns each
// into an outbox row, as the WAL relay does.
func BenchmarkDecodeRow(b *testing.B) {
	recs := make([]outbox.Record, 10)
	for i := range recs {
		recs[i] = record(outbox.NewUUID(), "orders", fmt.Sprintf("customer-%d", i), `{"order_id":"7c1f","amount":1999,"currency":"EUR"}`,
			message.Metadata{"name": "OrderPlaced", "partition_key": fmt.Sprintf("customer-%d", i), "command": "PlaceOrder",
				"correlation_id": outbox.NewUUID(), "causation_id": outbox.NewUUID(), "created_at": "2026-12-04T18:00:00.123456789Z"})
	}
	content, err := walmsg.Encode(recs)
	require.NoError(b, err)
	b.SetBytes(int64(len(content)))
	b.ReportAllocs()
	for b.Loop() {
		evs, err := walmsg.Decode(content)
		if err != nil {
			b.Fatal(err)
		}
		for i := range evs {
			_ = evs[i].Row(int64(i))
		}
	}
}
