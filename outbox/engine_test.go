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

func newTestEngine(t *testing.T, pub message.Publisher, cfg ForwarderConfig) *engine {
	t.Helper()
	cfg.setDefaults()
	tel, err := newTelemetry(cfg)
	require.NoError(t, err)
	return &engine{pub: pub, cfg: &cfg, tel: tel}
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
	out := e.publish(rowsOf("1:k/t1", "2:a/t1", "3:k/t2", "4:/t2", "5:k/t1", "6:a/t1"))
	require.Equal(t, []int64{1, 2, 6, 4, 3, 5}, out.delivered)
	require.Empty(t, out.failures)
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
	out := e.publish(rows)
	require.Equal(t, []int64{1, 3, 5}, out.delivered, "b's later row is given back, not published")
	require.Len(t, out.failures, 1)
	fl := out.failures[0]
	require.EqualValues(t, 2, fl.ID)
	require.False(t, fl.Park)
	require.InDelta(t, 2*time.Second, fl.RetryAfter, float64(400*time.Millisecond), "MinBackoff doubled once, ±20%")
	require.False(t, out.outage)
	require.Equal(t, 1, out.failed)

	rows[1].Attempts = 2 // the last attempt
	out = e.publish(rows)
	require.True(t, out.failures[0].Park, "parked after MaxAttempts")
	require.Contains(t, out.failures[0].Error, "parked after 3 attempts: rejected")
	require.Equal(t, 1, out.parked)
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
	out := e.publish(rows)
	require.True(t, out.outage, "two keys failed and nothing was published")
	require.EqualError(t, out.publishErr, "connection refused")
	for _, fl := range out.failures {
		require.False(t, fl.Park, "an outage parks nothing, even out of attempts")
	}

	// One key alone failing with ErrPublisherUnavailable is an outage too.
	pub.fail = func(string, *message.Message) error { return Unavailable(errors.New("not connected")) }
	out = e.publish(rowsOf("3:c/t"))
	require.True(t, out.outage)
	require.False(t, out.failures[0].Park)

	// A publish that goes through ends the outage: the next poison row is
	// parked.
	down = false
	pub.fail = nil
	require.False(t, e.publish(rowsOf("4:d/t")).outage)
	pub.fail = func(_ string, m *message.Message) error {
		if m.UUID == "u5" {
			return errors.New("rejected")
		}
		return nil
	}
	out = e.publish(rowsOf("5:e/t"))
	require.False(t, out.outage)
	require.True(t, out.failures[0].Park)
}

func TestEngineParksUndecodableRowsAtOnce(t *testing.T) {
	pub := &fakePublisher{}
	e := newTestEngine(t, pub, ForwarderConfig{})
	rows := rowsOf("1:a/t", "2:a/t", "3:b/t")
	rows[0].Metadata = []byte(`[1,2]`)
	out := e.publish(rows)
	require.Equal(t, []int64{3}, out.delivered, "a stops at its undecodable row")
	require.Len(t, out.failures, 1)
	require.True(t, out.failures[0].Park)
	require.Contains(t, out.failures[0].Error, "undecodable row: metadata is not a JSON object of strings")
	require.Equal(t, 0, out.failed, "no publish failed")
	require.Equal(t, 1, out.parked)
}
