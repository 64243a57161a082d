package amqp_test

import (
	"context"
	"math/rand/v2"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/brokers/amqp"
	"github.com/txoutbox/txoutbox/brokers/internal/brokertest"
	"github.com/txoutbox/txoutbox/internal/lateproxy"
)

// wireChannel names an AMQP channel among a frame proxy's connections:
// delivery tags count from 1 on each.
type wireChannel struct {
	Conn    int
	Channel uint16
}

// wireSettled replays frames the way RabbitMQ applies them to each
// channel's unacknowledged deliveries and returns the tags they settled,
// by channel. It fails on a frame whose tag was settled already (for a
// multiple ack: its own tag): RabbitMQ closes the channel for that
// (PRECONDITION_FAILED, unknown delivery tag), and a single ack would
// acknowledge a message twice.
func wireSettled(t *testing.T, frames []ackFrame) map[wireChannel]map[uint64]bool {
	t.Helper()
	settled := map[wireChannel]map[uint64]bool{}
	for i, f := range frames {
		c := wireChannel{f.Conn, f.Channel}
		if settled[c] == nil {
			settled[c] = map[uint64]bool{}
		}
		require.Positive(t, f.Tag, "frame %d: %v", i, f)
		require.False(t, settled[c][f.Tag], "frame %d settles tag %d again: %v; frames %v", i, f.Tag, f, frames)
		if f.Multiple {
			require.False(t, f.Nack, "frame %d: multiple nack %v", i, f)
			for tag := uint64(1); tag < f.Tag; tag++ {
				settled[c][tag] = true
			}
		}
		settled[c][f.Tag] = true
	}
	return settled
}

// oneChannel returns the settled tags of frames, which must all be on one
// channel.
func oneChannel(t *testing.T, frames []ackFrame) map[uint64]bool {
	t.Helper()
	settled := wireSettled(t, frames)
	require.LessOrEqual(t, len(settled), 1, "frames on several channels: %v", frames)
	for _, tags := range settled {
		return tags
	}
	return map[uint64]bool{}
}

// tagRange returns the tags from 1 to n.
func tagRange(n int) map[uint64]bool {
	tags := map[uint64]bool{}
	for tag := range uint64(n) {
		tags[tag+1] = true
	}
	return tags
}

// settleShuffled receives from ch until done(seen) holds, seen counting
// the arrivals of each UUID. It holds up to chunk messages (fewer when no
// further one comes within 20ms) and then settles them in a random order:
// nacking those nack(m, arrivals of m so far) chooses, acking the others.
// It returns seen and the messages in the order they arrived.
func settleShuffled(t *testing.T, ch <-chan *message.Message, chunk int, done func(seen map[string]int) bool, nack func(m *message.Message, arrivals int) bool) (map[string]int, []*message.Message) {
	t.Helper()
	seen := map[string]int{}
	var arrived, held []*message.Message
	settle := func() {
		rand.Shuffle(len(held), func(i, j int) { held[i], held[j] = held[j], held[i] })
		for _, m := range held {
			if nack != nil && nack(m, seen[m.UUID]) {
				m.Nack()
			} else {
				m.Ack()
			}
		}
		held = held[:0]
	}
	deadline := time.After(brokertest.ReceiveTimeout)
	for !done(seen) || len(held) > 0 {
		if done(seen) || len(held) == chunk {
			settle()
			continue
		}
		var quiet <-chan time.Time
		if len(held) > 0 {
			quiet = time.After(20 * time.Millisecond)
		}
		select {
		case m, ok := <-ch:
			require.True(t, ok, "subscription closed")
			seen[m.UUID]++
			held = append(held, m)
			arrived = append(arrived, m)
		case <-quiet:
			settle()
		case <-deadline:
			require.FailNow(t, "timeout", "%d messages seen", len(seen))
		}
	}
	return seen, arrived
}

// allSeen returns a done function for settleShuffled: every one of msgs
// arrived, and those of twice twice.
func allSeen(msgs []*message.Message, twice map[string]bool) func(map[string]int) bool {
	return func(seen map[string]int) bool {
		for _, m := range msgs {
			want := 1
			if twice[m.UUID] {
				want = 2
			}
			if seen[m.UUID] < want {
				return false
			}
		}
		return true
	}
}

// requireDrained checks that topic's queue is empty and that a new
// subscription receives nothing: no message comes again.
func requireDrained(t *testing.T, topic string) {
	t.Helper()
	requireReady(t, topic, 0)
	again, err := newSubscriber(t, amqp.Config{Prefetch: 50, Concurrent: true}).Subscribe(t.Context(), topic)
	require.NoError(t, err)
	brokertest.RequireNoMore(t, again, 300*time.Millisecond)
}

// TestConcurrentWindow: with Concurrent and Prefetch 50, a subscription
// hands over 50 messages in queue order without any ack, and not a 51st;
// acked in a random order, the acks RabbitMQ receives cover exactly the
// acked messages (never one still held), each once, and the channel is
// never closed. Every message arrives once; none comes again.
func TestConcurrentWindow(t *testing.T) {
	t.Parallel()
	const (
		n        = 200
		prefetch = 50
	)
	topic := brokertest.RandomTopic()
	pub := newPublisher(t, topic)
	msgs := brokertest.KeyedMessages(n, 10)
	publishAll(t, pub, topic, msgs)
	proxy := newFrameProxy(t)
	logs := newLogCounter()
	sub := newSubscriber(t, amqp.Config{URL: proxy.URL(), Prefetch: prefetch, Concurrent: true, Logger: logs})
	ch, err := sub.Subscribe(t.Context(), topic)
	require.NoError(t, err)

	window := make([]*message.Message, prefetch)
	for i := range window {
		window[i] = next(t, ch)
		require.Equal(t, msgs[i].UUID, window[i].UUID, "message %d", i)
	}
	brokertest.RequireNoMore(t, ch, 200*time.Millisecond)
	require.Empty(t, proxy.Frames())

	// Message i has delivery tag i+1. Ack half the window in a random
	// order: after MaxAckDelay RabbitMQ has the acks of exactly those.
	order := rand.Perm(prefetch)
	acked := map[uint64]bool{}
	for _, i := range order[:prefetch/2] {
		window[i].Ack()
		acked[uint64(i+1)] = true
	}
	time.Sleep(amqp.MaxAckDelay + 200*time.Millisecond)
	require.Equal(t, acked, oneChannel(t, proxy.Frames()), "the acks on the wire are the handler's")
	for _, i := range order[prefetch/2:] {
		window[i].Ack()
	}

	// The rest follows in queue order, acked out of order in chunks.
	_, rest := settleShuffled(t, ch, 20, allSeen(msgs[prefetch:], nil), nil)
	require.Empty(t, logs.Lines("error"), "the channel was never lost")
	brokertest.RequireSame(t, msgs[prefetch:], rest)
	require.Eventually(t, func() bool { return len(oneChannel(t, proxy.Frames())) == n }, 5*time.Second, 10*time.Millisecond)
	require.Equal(t, tagRange(n), oneChannel(t, proxy.Frames()))
	require.Empty(t, logs.Lines("error"), "the channel was never lost")
	require.NoError(t, sub.Close())
	requireDrained(t, topic)
}

// TestConcurrentNacks nacks messages in the middle of out-of-order acks:
// the acks held when a nack comes are sent before it, the nacked messages
// come again (once: then they are acked), the acked ones do not, and
// every delivery tag is settled once on the wire.
func TestConcurrentNacks(t *testing.T) {
	t.Parallel()
	const n = 300
	topic := brokertest.RandomTopic()
	pub := newPublisher(t, topic)
	msgs := brokertest.KeyedMessages(n, 10)
	publishAll(t, pub, topic, msgs)
	proxy := newFrameProxy(t)
	logs := newLogCounter()
	sub := newSubscriber(t, amqp.Config{URL: proxy.URL(), Prefetch: 50, Concurrent: true, Logger: logs})
	ch, err := sub.Subscribe(t.Context(), topic)
	require.NoError(t, err)

	// Messages 0-9 acked in a random order, then message 10 nacked: one
	// multiple ack, then the nack. (More messages wait to be handed over,
	// so the subscription does not idle and send the acks by itself.)
	first := make([]*message.Message, 11)
	for i := range first {
		first[i] = next(t, ch)
	}
	for _, i := range rand.Perm(10) {
		first[i].Ack()
	}
	time.Sleep(50 * time.Millisecond)
	first[10].Nack()
	proxy.waitFrame(t, 5*time.Second, func(f ackFrame) bool { return f.Nack })
	frames := proxy.Frames()
	require.Equal(t, []ackFrame{
		{Channel: 1, Tag: 10, Multiple: true},
		{Nack: true, Channel: 1, Tag: 11, Requeue: true},
	}, frames[:min(2, len(frames))], "the held acks go before the nack")

	// Every 7th of the others is nacked when it first arrives.
	nacked := map[string]bool{}
	for i := 11; i < n; i += 7 {
		nacked[msgs[i].UUID] = true
	}
	seen, _ := settleShuffled(t, ch, 20, allSeen(msgs[10:], nacked), func(m *message.Message, arrivals int) bool {
		return nacked[m.UUID] && arrivals == 1
	})
	require.Empty(t, logs.Lines("error"), "the channel was never lost")
	require.Equal(t, 1, seen[msgs[10].UUID], "message 10 comes again, once")
	for _, m := range msgs[11:] {
		want := 1
		if nacked[m.UUID] {
			want = 2
		}
		require.Equal(t, want, seen[m.UUID], "message %s", m.Metadata.Get("seq"))
	}
	deliveries := n + 1 + len(nacked)
	require.Eventually(t, func() bool { return len(oneChannel(t, proxy.Frames())) == deliveries }, 5*time.Second, 10*time.Millisecond)
	require.Equal(t, tagRange(deliveries), oneChannel(t, proxy.Frames()))
	nacks := 0
	for _, f := range proxy.Frames() {
		if f.Nack {
			nacks++
			require.True(t, f.Requeue, "%v", f)
			require.False(t, f.Multiple, "%v", f)
		}
	}
	require.Equal(t, 1+len(nacked), nacks, "one nack frame per nack")
	require.Empty(t, logs.Lines("error"), "the channel was never lost")
	require.NoError(t, sub.Close())
	requireDrained(t, topic)
}

// TestConcurrentOutOfOrderAcks drains 1,000 messages with Prefetch 50,
// acked in a random order in chunks of 20, and counts the ack frames:
// they are coalesced, far fewer than the messages, and settle every
// delivery tag once.
func TestConcurrentOutOfOrderAcks(t *testing.T) {
	t.Parallel()
	const n = 1000
	topic := brokertest.RandomTopic()
	pub := newPublisher(t, topic)
	msgs := brokertest.KeyedMessages(n, 10)
	publishAll(t, pub, topic, msgs)
	proxy := newFrameProxy(t)
	logs := newLogCounter()
	sub := newSubscriber(t, amqp.Config{URL: proxy.URL(), Prefetch: 50, Concurrent: true, Logger: logs})
	ch, err := sub.Subscribe(t.Context(), topic)
	require.NoError(t, err)

	_, got := settleShuffled(t, ch, 20, allSeen(msgs, nil), nil)
	require.Empty(t, logs.Lines("error"), "the channel was never lost")
	brokertest.RequireSame(t, msgs, got)
	require.Eventually(t, func() bool { return len(oneChannel(t, proxy.Frames())) == n }, 5*time.Second, 10*time.Millisecond)
	require.Equal(t, tagRange(n), oneChannel(t, proxy.Frames()))
	frames := proxy.Frames()
	multiple := 0
	for _, f := range frames {
		if f.Multiple {
			multiple++
		}
	}
	t.Logf("%d ack frames (%d multiple) for %d messages", len(frames), multiple, n)
	require.Less(t, len(frames), n/10, "acks are coalesced")
	require.Empty(t, logs.Lines("error"), "the channel was never lost")
	require.NoError(t, sub.Close())
	requireDrained(t, topic)
}

// TestConcurrentEndSendsHeldAcks ends a subscription right after acking
// every message but one, in a random order: the acks, below and above the
// unacked one, are sent, each once, and only the unacked message comes
// again.
func TestConcurrentEndSendsHeldAcks(t *testing.T) {
	t.Parallel()
	for _, end := range []string{"close", "context"} {
		t.Run(end, func(t *testing.T) {
			t.Parallel()
			topic := brokertest.RandomTopic()
			pub := newPublisher(t, topic)
			msgs := brokertest.KeyedMessages(20, 3)
			require.NoError(t, pub.Publish(topic, msgs...))
			proxy := newFrameProxy(t)
			sub := newSubscriber(t, amqp.Config{URL: proxy.URL(), Prefetch: 50, Concurrent: true})
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			ch, err := sub.Subscribe(ctx, topic)
			require.NoError(t, err)
			got := make([]*message.Message, len(msgs))
			for i := range got {
				got[i] = next(t, ch)
			}
			for _, i := range rand.Perm(len(got)) {
				if i != 5 {
					got[i].Ack()
				}
			}
			if end == "close" {
				require.NoError(t, sub.Close())
			} else {
				cancel()
				for range ch {
				}
			}
			require.Error(t, got[5].Context().Err(), "the context of a message held at the end ends")

			want := tagRange(len(msgs))
			delete(want, 6)
			require.Eventually(t, func() bool { return len(oneChannel(t, proxy.Frames())) == len(want) }, 5*time.Second, 10*time.Millisecond)
			require.Equal(t, want, oneChannel(t, proxy.Frames()))
			requireReady(t, topic, 1)
			again := newSubscriber(t, amqp.Config{Prefetch: 50, Concurrent: true})
			ach, err := again.Subscribe(t.Context(), topic)
			require.NoError(t, err)
			require.Equal(t, msgs[5].UUID, next(t, ach).UUID)
			brokertest.RequireNoMore(t, ach, 300*time.Millisecond)
		})
	}
}

// TestConcurrentAckLinger: once every message the queue had is handed
// over and acked, the subscription idles and sends the acks after
// AckLinger, not after MaxAckDelay.
func TestConcurrentAckLinger(t *testing.T) {
	t.Parallel()
	topic := brokertest.RandomTopic()
	pub := newPublisher(t, topic)
	require.NoError(t, pub.Publish(topic, brokertest.KeyedMessages(5, 1)...))
	proxy := newFrameProxy(t)
	sub := newSubscriber(t, amqp.Config{URL: proxy.URL(), Prefetch: 50, Concurrent: true})
	ch, err := sub.Subscribe(t.Context(), topic)
	require.NoError(t, err)
	got := make([]*message.Message, 5)
	for i := range got {
		got[i] = next(t, ch)
	}
	for _, i := range []int{2, 0, 1, 4, 3} {
		got[i].Ack()
	}
	acked := time.Now()
	proxy.waitFrame(t, time.Second, func(f ackFrame) bool { return f.Tag == 5 })
	require.Less(t, time.Since(acked), amqp.MaxAckDelay/2, "the acks waited for MaxAckDelay")
	require.Equal(t, tagRange(5), oneChannel(t, proxy.Frames()))
}

// TestConcurrentAckAboveSlowMessage: messages acked above one not handled
// yet are acknowledged singly once MaxAckDelay is over, so a slow message
// does not hold the acks of the ones after it; its own ack goes out
// later, and nothing is acknowledged twice.
func TestConcurrentAckAboveSlowMessage(t *testing.T) {
	t.Parallel()
	topic := brokertest.RandomTopic()
	pub := newPublisher(t, topic)
	require.NoError(t, pub.Publish(topic, brokertest.KeyedMessages(3, 1)...))
	proxy := newFrameProxy(t)
	logs := newLogCounter()
	sub := newSubscriber(t, amqp.Config{URL: proxy.URL(), Prefetch: 10, Concurrent: true, Logger: logs})
	ch, err := sub.Subscribe(t.Context(), topic)
	require.NoError(t, err)
	slow, a, b := next(t, ch), next(t, ch), next(t, ch)
	b.Ack()
	a.Ack()
	time.Sleep(amqp.MaxAckDelay + 300*time.Millisecond)
	require.ElementsMatch(t, []ackFrame{{Channel: 1, Tag: 2}, {Channel: 1, Tag: 3}}, proxy.Frames(), "single acks above the slow message")
	require.Equal(t, 0, readyMessages(t, topic))
	slow.Ack()
	proxy.waitFrame(t, time.Second, func(f ackFrame) bool { return f.Tag == 1 })
	require.Equal(t, tagRange(3), oneChannel(t, proxy.Frames()))
	require.NoError(t, sub.Close())
	require.Empty(t, logs.Lines("error"))
	requireDrained(t, topic)
}

// TestConcurrentReconnect cuts the connection of a Concurrent subscription
// that holds messages, acked and not, and lets it connect again: the acks
// of the lost channel go nowhere, the new channel's delivery tags start at
// 1 again and are acknowledged correctly (the channel is not lost a
// second time), every message arrives, and none is left in the queue.
func TestConcurrentReconnect(t *testing.T) {
	t.Parallel()
	topic := brokertest.RandomTopic()
	pub := newPublisher(t, topic)
	frames := newFrameProxy(t)
	uri, err := amqp091.ParseURI(frames.URL())
	require.NoError(t, err)
	proxy := lateproxy.New(t, net.JoinHostPort(uri.Host, strconv.Itoa(uri.Port)))
	proxy.Start(t)
	logs := newLogCounter()
	sub := newSubscriber(t, amqp.Config{URL: proxy.URL(frames.URL()), Prefetch: 20, Concurrent: true, Logger: logs})
	ch, err := sub.Subscribe(t.Context(), topic)
	require.NoError(t, err)

	before, after := brokertest.KeyedMessages(300, 5), brokertest.KeyedMessages(300, 5)
	publishAll(t, pub, topic, before)
	seen, _ := settleShuffled(t, ch, 10, func(seen map[string]int) bool { return len(seen) == 50 }, nil)
	held := make([]*message.Message, 6)
	for i := range held {
		held[i] = next(t, ch)
		seen[held[i].UUID]++
	}
	// Acks above an unacked message, held back when the connection goes.
	held[3].Ack()
	held[4].Ack()
	proxy.Stop()
	time.Sleep(300 * time.Millisecond)
	proxy.Start(t)
	for _, i := range []int{5, 0, 2, 1} {
		held[i].Ack() // on the lost channel: goes nowhere
	}
	publishAll(t, pub, topic, after)

	all := append(before, after...)
	missing := func(more map[string]int) bool {
		for _, m := range all {
			if seen[m.UUID]+more[m.UUID] == 0 {
				return true
			}
		}
		return false
	}
	more, _ := settleShuffled(t, ch, 10, func(more map[string]int) bool { return !missing(more) }, nil)
	for uuid, k := range more {
		seen[uuid] += k
	}
	for _, m := range held {
		if m != held[3] && m != held[4] {
			require.GreaterOrEqual(t, seen[m.UUID], 2, "a message not acked before the outage comes again")
		}
	}
	errs := logs.Lines("error")
	require.Len(t, errs, 1, "%v", errs)
	require.Contains(t, errs[0], "subscription lost")

	settled := wireSettled(t, frames.Frames())
	var resumed []map[uint64]bool
	for c, tags := range settled {
		if c.Conn > 0 {
			resumed = append(resumed, tags)
		}
	}
	require.Len(t, resumed, 1, "acks on one new channel: %v", frames.Frames())
	require.True(t, resumed[0][1], "the new channel's tags start at 1")
	require.NoError(t, sub.Close())
	requireDrained(t, topic)
}

// TestConcurrentMessageContext: a message's context ends once it is
// acked or nacked, and when its subscription ends.
func TestConcurrentMessageContext(t *testing.T) {
	t.Parallel()
	topic := brokertest.RandomTopic()
	pub := newPublisher(t, topic)
	require.NoError(t, pub.Publish(topic, brokertest.KeyedMessages(3, 1)...))
	sub := newSubscriber(t, amqp.Config{Prefetch: 10, Concurrent: true})
	ctx, cancel := context.WithCancel(t.Context())
	ch, err := sub.Subscribe(ctx, topic)
	require.NoError(t, err)
	a, b, c := next(t, ch), next(t, ch), next(t, ch)
	for _, m := range []*message.Message{a, b, c} {
		require.NoError(t, m.Context().Err())
	}
	b.Ack()
	require.Eventually(t, func() bool { return b.Context().Err() != nil }, time.Second, time.Millisecond)
	a.Nack()
	require.Eventually(t, func() bool { return a.Context().Err() != nil }, time.Second, time.Millisecond)
	require.NoError(t, c.Context().Err())
	cancel()
	require.Eventually(t, func() bool { return c.Context().Err() != nil }, time.Second, time.Millisecond)
}
