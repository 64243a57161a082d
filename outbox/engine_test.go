package outbox

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
)

// fakePublisher records Publish calls; fail decides per message.
type fakePublisher struct {
	calls [][]string // topic, then the UUIDs of one call
	fail  func(topic string, msg *message.Message) error
}

func (p *fakePublisher) Publish(topic string, msgs ...*message.Message) error {
	call := []string{topic}
	for _, m := range msgs {
		call = append(call, m.UUID)
	}
	p.calls = append(p.calls, call)
	for _, m := range msgs {
		if p.fail != nil {
			if err := p.fail(topic, m); err != nil {
				return err
			}
		}
	}
	return nil
}

func (p *fakePublisher) Close() error { return nil }

func newTestEngine(t *testing.T, pub message.Publisher, cfg ForwarderConfig) *Engine {
	t.Helper()
	e, err := NewEngine(pub, cfg)
	require.NoError(t, err)
	return e
}

// rowsOf builds rows from "id:key/topic" specs; the UUID is "u<id>".
func rowsOf(specs ...string) []Row {
	rows := make([]Row, len(specs))
	for i, s := range specs {
		id, rest, _ := strings.Cut(s, ":")
		key, topic, _ := strings.Cut(rest, "/")
		var n int64
		fmt.Sscan(id, &n)
		rows[i] = Row{ID: n, UUID: "u" + id, Topic: topic, PartitionKey: key, Payload: []byte(`{}`), Metadata: []byte(`{"name":"E"}`)}
	}
	return rows
}

func TestEnginePublishesPerTopicInKeyOrder(t *testing.T) {
	pub := &fakePublisher{}
	e := newTestEngine(t, pub, ForwarderConfig{})
	// k moves t1 -> t2 -> t1: three rounds; the others go in the first.
	out := e.Publish(rowsOf("1:k/t1", "2:a/t1", "3:k/t2", "4:/t2", "5:k/t1", "6:a/t1"))
	require.Equal(t, []int64{1, 2, 6, 4, 3, 5}, out.Delivered)
	require.Empty(t, out.Failures)
	require.Equal(t, [][]string{
		{"t1", "u1", "u2", "u6"}, {"t2", "u4"}, // round 0
		{"t2", "u3"}, // round 1: k's t2 row after its first t1 row
		{"t1", "u5"}, // round 2
	}, pub.calls)
}

func TestEnginePoisonRowStopsOnlyItsKey(t *testing.T) {
	pub := &fakePublisher{fail: func(_ string, m *message.Message) error {
		if m.UUID == "u2" {
			return errors.New("rejected")
		}
		return nil
	}}
	e := newTestEngine(t, pub, ForwarderConfig{MaxAttempts: 3, MinBackoff: time.Second, MaxBackoff: time.Minute})
	rows := rowsOf("1:a/t", "2:b/t", "3:a/t", "4:b/t", "5:/t")
	rows[1].Attempts = 1 // its second failure
	out := e.Publish(rows)
	require.Equal(t, []int64{1, 3, 5}, out.Delivered, "b's later row is given back, not published")
	require.Len(t, out.Failures, 1)
	fl := out.Failures[0]
	require.EqualValues(t, 2, fl.ID)
	require.False(t, fl.Park)
	require.InDelta(t, 2*time.Second, fl.RetryAfter, float64(400*time.Millisecond), "MinBackoff doubled once, ±20%")
	require.False(t, out.Outage)
	require.Equal(t, 1, out.Failed)

	rows[1].Attempts = 2 // the last attempt
	out = e.Publish(rows)
	require.True(t, out.Failures[0].Park, "parked after MaxAttempts")
	require.Contains(t, out.Failures[0].Error, "parked after 3 attempts: rejected")
	require.Equal(t, 1, out.Parked)
}

func TestEngineOutageParksNothing(t *testing.T) {
	down := true
	pub := &fakePublisher{fail: func(string, *message.Message) error {
		if down {
			return errors.New("connection refused")
		}
		return nil
	}}
	e := newTestEngine(t, pub, ForwarderConfig{MaxAttempts: 1})
	rows := rowsOf("1:a/t", "2:b/t")
	out := e.Publish(rows)
	require.True(t, out.Outage, "two keys failed and nothing was published")
	require.EqualError(t, out.PublishErr, "connection refused")
	for _, fl := range out.Failures {
		require.False(t, fl.Park, "an outage parks nothing, even out of attempts")
	}

	// One key alone failing with ErrPublisherUnavailable is an outage too.
	pub.fail = func(string, *message.Message) error { return Unavailable(errors.New("not connected")) }
	out = e.Publish(rowsOf("3:c/t"))
	require.True(t, out.Outage)
	require.False(t, out.Failures[0].Park)

	// A publish that goes through ends the outage: the next poison row is
	// parked.
	down = false
	pub.fail = nil
	require.False(t, e.Publish(rowsOf("4:d/t")).Outage)
	pub.fail = func(_ string, m *message.Message) error {
		if m.UUID == "u5" {
			return errors.New("rejected")
		}
		return nil
	}
	out = e.Publish(rowsOf("5:e/t"))
	require.False(t, out.Outage)
	require.True(t, out.Failures[0].Park)
}

func TestEngineParksUndecodableRowsAtOnce(t *testing.T) {
	pub := &fakePublisher{}
	e := newTestEngine(t, pub, ForwarderConfig{})
	rows := rowsOf("1:a/t", "2:a/t", "3:b/t")
	rows[0].Metadata = []byte(`[1,2]`)
	out := e.Publish(rows)
	require.Equal(t, []int64{3}, out.Delivered, "a stops at its undecodable row")
	require.Len(t, out.Failures, 1)
	require.True(t, out.Failures[0].Park)
	require.Contains(t, out.Failures[0].Error, "undecodable row: metadata is not a JSON object of strings")
	require.Equal(t, 0, out.Failed, "no publish failed")
	require.Equal(t, 1, out.Parked)
}

func TestNewEngineValidates(t *testing.T) {
	_, err := NewEngine(nil, ForwarderConfig{MaxAttempts: -1})
	require.ErrorIs(t, err, ErrInvalidConfig)
	require.ErrorContains(t, err, "missing publisher")
	require.ErrorContains(t, err, "MaxAttempts is negative")

	e, err := NewEngine(&fakePublisher{}, ForwarderConfig{MinBackoff: time.Hour})
	require.NoError(t, err)
	fl := e.failure(&Row{ID: 1}, errors.New("rejected"), false)
	require.InDelta(t, time.Hour, fl.RetryAfter, float64(12*time.Minute), "MaxBackoff defaults to at least MinBackoff")
}

func TestDecodeRowsStopsKeysAtUndecodableRows(t *testing.T) {
	rows := rowsOf("1:a/t", "2:b/t", "3:a/t", "4:/t", "5:b/t", "6:/t")
	rows[1].Metadata = []byte(`"text"`) // b stops here
	rows[3].UUID = ""                   // unkeyed: stops nothing
	z, err := Zstd().Compress([]byte(`{"big":true}`))
	require.NoError(t, err)
	rows[5].Payload, rows[5].Metadata = z, []byte(`{"content_encoding":"zstd"}`)

	deliver, parked := DecodeRows(rows)
	var ids []int64
	for _, d := range deliver {
		require.Equal(t, d.Row.UUID, d.Message.UUID)
		ids = append(ids, d.Row.ID)
	}
	require.Equal(t, []int64{1, 3, 6}, ids, "b's row after its undecodable one is left out")
	require.Len(t, parked, 2)
	require.Equal(t, Failure{ID: 2, Park: true, Error: parked[0].Error}, parked[0])
	require.Contains(t, parked[0].Error, "undecodable row: metadata is not a JSON object of strings")
	require.Equal(t, Failure{ID: 4, Park: true, Error: "undecodable row: empty message UUID"}, parked[1])
	require.Equal(t, z, []byte(deliver[2].Message.Payload), "a compressed payload stays compressed")
	require.Equal(t, "zstd", deliver[2].Message.Metadata.Get(MetadataContentEncoding))

	// Several topics: each key keeps its order across them.
	deliver, parked = DecodeRows(rowsOf("1:k/t1", "2:k/t2", "3:/t2", "4:k/t1"))
	ids = ids[:0]
	for _, d := range deliver {
		ids = append(ids, d.Row.ID)
	}
	require.Equal(t, []int64{1, 3, 2, 4}, ids)
	require.Empty(t, parked)
}
