package outbox_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
)

// docEvent is an event with a large, compressible payload.
type docEvent struct {
	Key  string `json:"key"`
	Seq  int    `json:"seq"`
	Body string `json:"body"`
}

func (e docEvent) PartitionKey() string { return e.Key }

func compressible(n int) string {
	return strings.Repeat(`{"sku":"A-1","qty":3,"note":"handle with care"},`, n/48+1)[:n]
}

func TestCompressorsRoundTrip(t *testing.T) {
	t.Parallel()
	for _, c := range []outbox.Compressor{outbox.Gzip(gzip.BestSpeed), outbox.Gzip(99), outbox.Zstd()} {
		t.Run(c.Encoding(), func(t *testing.T) {
			t.Parallel()
			in := []byte(compressible(10_000))
			var wg sync.WaitGroup
			for range 8 { // the pooled and shared codecs under concurrency
				wg.Add(1)
				go func() {
					defer wg.Done()
					z, err := c.Compress(in)
					require.NoError(t, err)
					require.Less(t, len(z), len(in)/5)
					out, err := c.Decompress(z)
					require.NoError(t, err)
					require.Equal(t, in, out)
				}()
			}
			wg.Wait()
			_, err := c.Decompress([]byte("not compressed at all"))
			require.Error(t, err)
		})
	}
}

func TestDecompressRefusesBombs(t *testing.T) {
	t.Parallel()
	big := make([]byte, outbox.MaxDecompressedBytes+1)
	for _, c := range []outbox.Compressor{outbox.Gzip(gzip.BestSpeed), outbox.Zstd()} {
		z, err := c.Compress(big)
		require.NoError(t, err)
		_, err = outbox.DecompressPayload(c.Encoding(), z)
		require.ErrorIs(t, err, outbox.ErrDecompress, c.Encoding())
	}
}

func TestEncoderCompresses(t *testing.T) {
	t.Parallel()
	enc := outbox.NewEncoder(outbox.EncoderConfig{Compressor: outbox.Zstd(), CompressMinBytes: 100})
	recs, err := enc.EncodeAll([]outbox.Entry{
		{Event: docEvent{Key: "big", Body: compressible(10_000)}},
		{Event: docEvent{Key: "small", Body: "x"}},
	})
	require.NoError(t, err)

	big := recs[0].Message
	require.Equal(t, "zstd", big.Metadata.Get(outbox.MetadataContentEncoding))
	require.Less(t, len(big.Payload), 1000)
	require.NoError(t, outbox.Decompress(big))
	require.Empty(t, big.Metadata.Get(outbox.MetadataContentEncoding))
	var ev docEvent
	require.NoError(t, json.Unmarshal(big.Payload, &ev))
	require.Equal(t, compressible(10_000), ev.Body)

	require.Empty(t, recs[1].Message.Metadata.Get(outbox.MetadataContentEncoding), "below CompressMinBytes")
	require.True(t, json.Valid(recs[1].Message.Payload))

	enc = outbox.NewEncoder(outbox.EncoderConfig{Compressor: expanding{}})
	rec, err := enc.Encode(outbox.Entry{Event: docEvent{Key: "k", Body: compressible(5000)}})
	require.NoError(t, err)
	require.Empty(t, rec.Message.Metadata.Get(outbox.MetadataContentEncoding), "did not get smaller")
	require.True(t, json.Valid(rec.Message.Payload))
}

// expanding is a Compressor whose output is larger than its input.
type expanding struct{}

func (expanding) Encoding() string                    { return "expanding" }
func (expanding) Compress(p []byte) ([]byte, error)   { return append(p, 0), nil }
func (expanding) Decompress(p []byte) ([]byte, error) { return p[:len(p)-1], nil }

func TestDecompressErrors(t *testing.T) {
	t.Parallel()
	msg := message.NewMessage("m-1", []byte("garbage"))
	msg.Metadata.Set(outbox.MetadataContentEncoding, "gzip")
	err := outbox.Decompress(msg)
	require.ErrorIs(t, err, outbox.ErrDecompress)
	require.Contains(t, err.Error(), "m-1")
	require.Equal(t, "garbage", string(msg.Payload), "unchanged on error")

	msg.Metadata.Set(outbox.MetadataContentEncoding, "brotli")
	err = outbox.Decompress(msg)
	require.ErrorIs(t, err, outbox.ErrDecompress)
	require.Contains(t, err.Error(), `unknown content encoding "brotli" (known: gzip, zstd)`)
}

// rawPublisher records the messages it accepts as published.
type rawPublisher struct {
	mu   sync.Mutex
	msgs []*message.Message
}

func (p *rawPublisher) Publish(_ string, msgs ...*message.Message) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, m := range msgs {
		p.msgs = append(p.msgs, m.Copy())
	}
	return nil
}

func (p *rawPublisher) Close() error { return nil }

func (p *rawPublisher) wait(t *testing.T, n int) []*message.Message {
	t.Helper()
	require.Eventually(t, func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.msgs) >= n
	}, 20*time.Second, 10*time.Millisecond)
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]*message.Message(nil), p.msgs...)
}

// TestForwarderDecompresses stores rows before compression is turned on,
// while it is on (gzip, then zstd) and after it is turned off: the
// forwarder publishes every one with its original payload, in key order,
// and without the content encoding.
func TestForwarderDecompresses(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		st := newStore(t, db, gormstore.Config{})
		body := compressible(10_000)
		seq := 0
		for _, c := range []outbox.Compressor{nil, outbox.Gzip(gzip.DefaultCompression), outbox.Zstd(), nil} {
			save(t, db, st, outbox.EncoderConfig{Compressor: c}, docEvent{Key: "k", Seq: seq, Body: body}, docEvent{Key: "k", Seq: seq + 1, Body: body})
			seq += 2
		}
		var stored []string
		require.NoError(t, db.Raw("SELECT metadata FROM txoutbox_outbox ORDER BY id").Scan(&stored).Error)
		encodings := make([]string, len(stored))
		for i, s := range stored {
			var md map[string]string
			require.NoError(t, json.Unmarshal([]byte(s), &md))
			encodings[i] = md[outbox.MetadataContentEncoding]
		}
		require.Equal(t, []string{"", "", "gzip", "gzip", "zstd", "zstd", "", ""}, encodings, "each row records its compression")

		pub := &rawPublisher{}
		f, err := outbox.NewForwarder(st, pub, quietConfig(outbox.ForwarderConfig{}))
		require.NoError(t, err)
		runForwarder(t, f)
		for i, m := range pub.wait(t, seq) {
			var ev docEvent
			require.NoError(t, json.Unmarshal(m.Payload, &ev), "message %d", i)
			require.Equal(t, i, ev.Seq)
			require.Equal(t, body, ev.Body)
			require.Empty(t, m.Metadata.Get(outbox.MetadataContentEncoding))
		}
	})
}

func TestForwarderPublishCompressed(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		st := newStore(t, db, gormstore.Config{})
		body := compressible(5000)
		save(t, db, st, outbox.EncoderConfig{Compressor: outbox.Gzip(gzip.BestSpeed)}, docEvent{Key: "k", Body: body})
		save(t, db, st, outbox.EncoderConfig{}, docEvent{Key: "k", Seq: 1, Body: body})

		pub := &rawPublisher{}
		f, err := outbox.NewForwarder(st, pub, quietConfig(outbox.ForwarderConfig{PublishCompressed: true}))
		require.NoError(t, err)
		runForwarder(t, f)
		got := pub.wait(t, 2)
		require.Equal(t, "gzip", got[0].Metadata.Get(outbox.MetadataContentEncoding))
		zr, err := gzip.NewReader(bytes.NewReader(got[0].Payload))
		require.NoError(t, err, "published as stored: gzip bytes")
		var ev docEvent
		require.NoError(t, json.NewDecoder(zr).Decode(&ev))
		require.Equal(t, body, ev.Body)
		require.Empty(t, got[1].Metadata.Get(outbox.MetadataContentEncoding), "a plain row stays plain")
	})
}

// TestForwarderParksCorruptCompressedRow corrupts a compressed row in the
// table: the forwarder parks it with the reason and holds its key's later
// rows; other keys go on.
func TestForwarderParksCorruptCompressedRow(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		st := newStore(t, db, gormstore.Config{})
		cfg := outbox.EncoderConfig{Compressor: outbox.Zstd()}
		body := compressible(5000)
		save(t, db, st, cfg, docEvent{Key: "bad", Body: body}, docEvent{Key: "good", Body: body})
		save(t, db, st, cfg, docEvent{Key: "bad", Seq: 1, Body: body})
		require.NoError(t, db.Exec("UPDATE txoutbox_outbox SET payload = ? WHERE partition_key = 'bad' AND id = (SELECT min(id) FROM txoutbox_outbox)", []byte("\x28\xb5\x2f\xfdcorrupt")).Error)

		pub := &rawPublisher{}
		f, err := outbox.NewForwarder(st, pub, quietConfig(outbox.ForwarderConfig{}))
		require.NoError(t, err)
		runForwarder(t, f)
		got := pub.wait(t, 1)
		require.Equal(t, "good", got[0].Metadata.Get(outbox.MetadataPartitionKey))

		var failed []gormstore.FailedRow
		require.Eventually(t, func() bool {
			failed, err = st.ListFailed(context.Background(), 0, 10)
			require.NoError(t, err)
			return len(failed) == 1
		}, 10*time.Second, 20*time.Millisecond)
		require.Equal(t, "bad", failed[0].PartitionKey)
		require.Contains(t, failed[0].LastError, "cannot decompress payload")
		require.Contains(t, failed[0].LastError, "zstd")
		time.Sleep(200 * time.Millisecond)
		require.Len(t, pub.wait(t, 1), 1, "the key's later row waits behind the parked one")
		require.EqualValues(t, 2, pending(t, db, "partition_key = 'bad'"))
	})
}

// save encodes events with cfg and saves them in one transaction.
func save(t *testing.T, db *gorm.DB, st outbox.Store, cfg outbox.EncoderConfig, events ...any) {
	t.Helper()
	entries := make([]outbox.Entry, len(events))
	for i, ev := range events {
		entries[i] = outbox.Entry{Event: ev}
	}
	recs, err := outbox.NewEncoder(cfg).EncodeAll(entries)
	require.NoError(t, err)
	require.NoError(t, db.Transaction(func(tx *gorm.DB) error {
		return st.Save(context.Background(), tx, recs)
	}))
}
