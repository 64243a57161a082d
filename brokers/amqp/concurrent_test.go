package amqp_test

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/brokers/amqp"
	"github.com/txoutbox/txoutbox/brokers/internal/brokertest"
)

// With Concurrent, a subscription hands over Prefetch messages without
// waiting for acks, in queue order, and takes acks and nacks in any order:
// the acked messages are gone, the nacked ones come again, RabbitMQ never
// closes the channel for a bad delivery tag, and the acks on the wire are
// coalesced.
func TestConcurrentOutOfOrderAcks(t *testing.T) {
	t.Parallel()
	const (
		n        = 1000
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

	// A whole prefetch window arrives without any ack, in queue order, and
	// not one more.
	window := make([]*message.Message, prefetch)
	for i := range window {
		window[i] = next(t, ch)
		require.Equal(t, msgs[i].UUID, window[i].UUID)
	}
	select {
	case m := <-ch:
		require.FailNow(t, "more than Prefetch messages in flight", m.UUID)
	case <-time.After(200 * time.Millisecond):
	}

	// Settle the window in a random order, nacking a few: the rest of the
	// queue follows; the nacked ones come again, once acked they are gone.
	nacked := map[string]bool{}
	rand.Shuffle(len(window), func(i, j int) { window[i], window[j] = window[j], window[i] })
	for i, m := range window {
		if i%10 == 3 {
			nacked[m.UUID] = true
			m.Nack()
			continue
		}
		m.Ack()
	}
	seen := map[string]int{}
	var held []*message.Message
	for len(seen) < n-prefetch+len(nacked) {
		m := next(t, ch)
		seen[m.UUID]++
		held = append(held, m)
		if len(held) == 20 || len(seen) == n-prefetch+len(nacked) {
			rand.Shuffle(len(held), func(i, j int) { held[i], held[j] = held[j], held[i] })
			for _, h := range held {
				h.Ack()
			}
			held = held[:0]
		}
	}
	for uuid := range nacked {
		require.Equal(t, 1, seen[uuid], "a nacked message comes again")
	}
	for _, m := range msgs[prefetch:] {
		require.Equal(t, 1, seen[m.UUID], "each message once")
	}
	require.Empty(t, logs.Lines("error"), "the channel was never lost")

	proxy.waitFrame(t, 5*time.Second, func(f ackFrame) bool { return !f.Nack && f.Multiple && f.Tag >= uint64(n) })
	acks := 0
	for _, f := range proxy.Frames() {
		if !f.Nack {
			acks++
		}
	}
	t.Logf("%d ack frames for %d messages", acks, n+len(nacked))
	require.Less(t, acks, n/5, "acks are coalesced")
	require.NoError(t, sub.Close())
	requireReady(t, topic, 0)
}

// A message acked above one not handled yet is acknowledged once its
// MaxAckDelay is over, on its own: a slow message does not hold the acks
// of the ones after it, and nothing is acknowledged twice.
func TestConcurrentAckAboveSlowMessage(t *testing.T) {
	t.Parallel()
	topic := brokertest.RandomTopic()
	pub := newPublisher(t, topic)
	msgs := brokertest.KeyedMessages(3, 1)
	publishAll(t, pub, topic, msgs)
	logs := newLogCounter()
	sub := newSubscriber(t, amqp.Config{Prefetch: 10, Concurrent: true, Logger: logs})
	ch, err := sub.Subscribe(t.Context(), topic)
	require.NoError(t, err)
	slow, a, b := next(t, ch), next(t, ch), next(t, ch)
	b.Ack()
	a.Ack()
	time.Sleep(amqp.MaxAckDelay + 300*time.Millisecond)
	require.Equal(t, 0, readyMessages(t, topic))
	slow.Ack()
	require.NoError(t, sub.Close())
	requireReady(t, topic, 0)
	require.Empty(t, logs.Lines("error"))

	// Nothing comes again to a new subscription.
	again, err := newSubscriber(t, amqp.Config{Prefetch: 10, Concurrent: true}).Subscribe(t.Context(), topic)
	require.NoError(t, err)
	brokertest.RequireNoMore(t, again, 300*time.Millisecond)
}
