package amqp_test

import (
	"cmp"
	"context"
	"net"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/brokers/amqp"
	"github.com/txoutbox/txoutbox/brokers/internal/brokertest"
	"github.com/txoutbox/txoutbox/internal/lateproxy"
)

// publishAll publishes msgs to topic in calls of 500.
func publishAll(t *testing.T, pub *amqp.Publisher, topic string, msgs []*message.Message) {
	t.Helper()
	for i := 0; i < len(msgs); i += 500 {
		require.NoError(t, pub.Publish(topic, msgs[i:min(i+500, len(msgs))]...))
	}
}

func newSubscriber(t *testing.T, cfg amqp.Config) *amqp.Subscriber {
	t.Helper()
	cfg.URL = cmp.Or(cfg.URL, brokertest.AMQPURL())
	sub, err := amqp.NewSubscriber(t.Context(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, sub.Close()) })
	return sub
}

// next receives one message from ch.
func next(t *testing.T, ch <-chan *message.Message) *message.Message {
	t.Helper()
	select {
	case m, ok := <-ch:
		require.True(t, ok, "subscription closed")
		return m
	case <-time.After(20 * time.Second):
		require.FailNow(t, "no message within 20s")
		return nil
	}
}

// TestCoalescedAcks consumes a backlog of 5,000 messages with Prefetch
// 500 and reads the acknowledgements off the wire: every message arrives
// once and in order, RabbitMQ receives far fewer ack frames than messages,
// and the frames cover every delivery tag.
func TestCoalescedAcks(t *testing.T) {
	t.Parallel()
	const n = 5000
	topic := brokertest.RandomTopic()
	pub := newPublisher(t, topic)
	msgs := brokertest.KeyedMessages(n, 50)
	publishAll(t, pub, topic, msgs)

	proxy := newFrameProxy(t)
	sub := newSubscriber(t, amqp.Config{URL: proxy.URL(), Prefetch: 500})
	ch, err := sub.Subscribe(t.Context(), topic)
	require.NoError(t, err)
	brokertest.RequireSame(t, msgs, brokertest.Receive(t, ch, n))

	proxy.waitFrame(t, 5*time.Second, func(f ackFrame) bool { return f.Tag == n })
	frames := proxy.Frames()
	t.Logf("%d ack frames for %d messages", len(frames), n)
	{
		var l uint64
		var d []uint64
		for _, f := range frames {
			d = append(d, f.Tag-l)
			l = f.Tag
		}
		t.Logf("%v", d)
	}
	require.Less(t, len(frames), n/20, "acks are not coalesced")
	var last uint64
	for _, f := range frames {
		require.False(t, f.Nack, "%v", f)
		require.Greater(t, f.Tag, last, "%v", f)
		if !f.Multiple {
			require.Equal(t, last+1, f.Tag, "a single ack skips tags: %v", f)
		}
		require.LessOrEqual(t, f.Tag-last, uint64(amqp.MaxPendingAcks), "%v", f)
		last = f.Tag
	}
	require.Equal(t, uint64(n), last)

	require.NoError(t, sub.Close())
	requireReady(t, topic, 0)
}

// TestNackRequeues nacks one message: with Prefetch 1 it comes again
// before the messages behind it, one ack frame per message; with Prefetch
// 100 the held-back acks are sent before the nack. Either way no ack is
// lost: the queue ends empty.
func TestNackRequeues(t *testing.T) {
	t.Parallel()
	t.Run("prefetch=1", func(t *testing.T) {
		t.Parallel()
		topic := brokertest.RandomTopic()
		pub := newPublisher(t, topic)
		msgs := brokertest.KeyedMessages(10, 3)
		require.NoError(t, pub.Publish(topic, msgs...))
		proxy := newFrameProxy(t)
		sub := newSubscriber(t, amqp.Config{URL: proxy.URL(), Prefetch: 1})
		ch, err := sub.Subscribe(t.Context(), topic)
		require.NoError(t, err)

		var got []string
		nacked := false
		for len(got) < 11 {
			m := next(t, ch)
			got = append(got, m.UUID)
			if m.UUID == msgs[4].UUID && !nacked {
				nacked = true
				m.Nack()
				continue
			}
			m.Ack()
		}
		var want []string
		for i, m := range msgs {
			want = append(want, m.UUID)
			if i == 4 {
				want = append(want, m.UUID)
			}
		}
		require.Equal(t, want, got)

		proxy.waitFrame(t, 5*time.Second, func(f ackFrame) bool { return f.Tag == 11 })
		var wire []ackFrame
		for i := range uint64(11) {
			wire = append(wire, ackFrame{Nack: i == 4, Channel: 1, Tag: i + 1, Requeue: i == 4})
		}
		require.Equal(t, wire, proxy.Frames(), "one ack per message, the nack requeues")
		require.NoError(t, sub.Close())
		requireReady(t, topic, 0)
	})
	t.Run("prefetch=100", func(t *testing.T) {
		t.Parallel()
		topic := brokertest.RandomTopic()
		pub := newPublisher(t, topic)
		msgs := brokertest.KeyedMessages(50, 3)
		require.NoError(t, pub.Publish(topic, msgs...))
		proxy := newFrameProxy(t)
		sub := newSubscriber(t, amqp.Config{URL: proxy.URL(), Prefetch: 100})
		ch, err := sub.Subscribe(t.Context(), topic)
		require.NoError(t, err)
		first := next(t, ch)
		// Let the backlog arrive, so that acks are held back.
		time.Sleep(200 * time.Millisecond)
		first.Ack()

		seen := map[string]int{first.UUID: 1}
		for i := 1; i < 51; i++ {
			m := next(t, ch)
			seen[m.UUID]++
			if i < 20 || i == 20 && seen[m.UUID] == 1 {
				require.Equal(t, msgs[i].UUID, m.UUID, "message %d", i)
			}
			if m.UUID == msgs[20].UUID && seen[m.UUID] == 1 {
				m.Nack()
				continue
			}
			m.Ack()
		}
		for i, m := range msgs {
			want := 1
			if i == 20 {
				want = 2
			}
			require.Equal(t, want, seen[m.UUID], "message %d", i)
		}

		proxy.waitFrame(t, 5*time.Second, func(f ackFrame) bool { return f.Tag == 51 })
		frames := proxy.Frames()
		var nack int
		for nack = range frames {
			if frames[nack].Nack {
				break
			}
		}
		require.Equal(t, ackFrame{Nack: true, Channel: 1, Tag: 21, Requeue: true}, frames[nack], "%v", frames)
		require.Positive(t, nack, "%v", frames)
		require.Equal(t, uint64(20), frames[nack-1].Tag, "the acks of messages 0-19 are sent before the nack: %v", frames)
		require.NoError(t, sub.Close())
		requireReady(t, topic, 0)
	})
}

// TestAckDelay holds a message while the ack of the one before it is held
// back: the ack goes out after MaxAckDelay, not when the slow handler is
// done.
func TestAckDelay(t *testing.T) {
	t.Parallel()
	topic := brokertest.RandomTopic()
	pub := newPublisher(t, topic)
	require.NoError(t, pub.Publish(topic, brokertest.KeyedMessages(10, 1)...))
	proxy := newFrameProxy(t)
	sub := newSubscriber(t, amqp.Config{URL: proxy.URL(), Prefetch: 100})
	ch, err := sub.Subscribe(t.Context(), topic)
	require.NoError(t, err)

	m := next(t, ch)
	time.Sleep(200 * time.Millisecond) // the others wait in the client
	m.Ack()
	slow := next(t, ch)
	start := time.Now()
	proxy.waitFrame(t, time.Second, func(f ackFrame) bool { return f.Tag == 1 })
	require.GreaterOrEqual(t, time.Since(start), amqp.MaxAckDelay/2, "the ack was not held back")
	slow.Ack()
	brokertest.Receive(t, ch, 8)
	proxy.waitFrame(t, time.Second, func(f ackFrame) bool { return f.Tag == 10 })
}

// TestEndFlushesAcks ends a subscription (its context) right after acking
// messages whose acks are held back: they are sent, so a new subscription
// goes on with the first message not acked.
func TestEndFlushesAcks(t *testing.T) {
	t.Parallel()
	topic := brokertest.RandomTopic()
	pub := newPublisher(t, topic)
	msgs := brokertest.KeyedMessages(60, 5)
	require.NoError(t, pub.Publish(topic, msgs...))
	sub := newSubscriber(t, amqp.Config{Prefetch: 100})

	ctx, cancel := context.WithCancel(t.Context())
	ch, err := sub.Subscribe(ctx, topic)
	require.NoError(t, err)
	m := next(t, ch)
	time.Sleep(200 * time.Millisecond) // the backlog waits in the client
	m.Ack()
	brokertest.RequireSame(t, msgs[1:30], brokertest.Receive(t, ch, 29))
	cancel()
	for range ch {
	}

	ch, err = sub.Subscribe(t.Context(), topic)
	require.NoError(t, err)
	brokertest.RequireSame(t, msgs[30:], brokertest.Receive(t, ch, 30))
	require.NoError(t, sub.Close())
	requireReady(t, topic, 0)
}

// TestReconnect cuts the subscriber's connection while it holds a message
// and lets it connect again: the same channel goes on delivering, the held
// message comes again, every message arrives, and the outage is logged
// once.
func TestReconnect(t *testing.T) {
	t.Parallel()
	topic := brokertest.RandomTopic()
	pub := newPublisher(t, topic)
	uri, err := amqp091.ParseURI(brokertest.AMQPURL())
	require.NoError(t, err)
	proxy := lateproxy.New(t, net.JoinHostPort(uri.Host, strconv.Itoa(uri.Port)))
	proxy.Start(t)
	logs := newLogCounter()
	sub := newSubscriber(t, amqp.Config{URL: proxy.URL(brokertest.AMQPURL()), Prefetch: 20, Logger: logs})
	ch, err := sub.Subscribe(t.Context(), topic)
	require.NoError(t, err)

	before, after := brokertest.KeyedMessages(300, 5), brokertest.KeyedMessages(300, 5)
	publishAll(t, pub, topic, before)
	seen := map[string]int{}
	for range 100 {
		m := next(t, ch)
		seen[m.UUID]++
		m.Ack()
	}
	held := next(t, ch)
	seen[held.UUID]++
	proxy.Stop()
	time.Sleep(300 * time.Millisecond)
	proxy.Start(t)
	held.Ack() // on the lost channel: it comes again
	publishAll(t, pub, topic, after)

	missing := func() int {
		n := 0
		for _, m := range append(before, after...) {
			if seen[m.UUID] == 0 {
				n++
			}
		}
		return n
	}
	for missing() > 0 {
		m := next(t, ch)
		seen[m.UUID]++
		m.Ack()
	}
	require.GreaterOrEqual(t, seen[held.UUID], 2, "the message held during the outage is redelivered")
	errs := logs.Lines("error")
	require.Len(t, errs, 1, "%v", errs)
	require.Contains(t, errs[0], "subscription lost")
	infos := logs.Lines("info")
	require.Len(t, infos, 1, "%v", infos)
	require.Contains(t, infos[0], "resumed")
	require.LessOrEqual(t, len(logs.Lines("debug")), 10, "%v", logs.Lines("debug"))
}

// TestDecode reads messages that other AMQP producers could send: headers
// that are not strings, the UUID only as message-id, or no UUID at all.
func TestDecode(t *testing.T) {
	t.Parallel()
	topic := brokertest.RandomTopic()
	newPublisher(t, topic) // deletes the queue at the end
	sub := newSubscriber(t, amqp.Config{})
	require.NoError(t, sub.SubscribeInitialize(topic))

	conn, err := amqp091.Dial(brokertest.AMQPURL())
	require.NoError(t, err)
	defer conn.Close()
	ach, err := conn.Channel()
	require.NoError(t, err)
	publish := func(p amqp091.Publishing) {
		require.NoError(t, ach.PublishWithContext(t.Context(), "", topic, true, false, p))
	}
	publish(amqp091.Publishing{MessageId: "not-this", Body: []byte("1"), Headers: amqp091.Table{
		"_watermill_message_uuid": "u-1", "s": "x", "n": int32(7), "b": []byte("raw"), "f": true,
	}})
	publish(amqp091.Publishing{MessageId: "m-2", Body: []byte("2"), Headers: amqp091.Table{"s": "y"}})
	publish(amqp091.Publishing{Body: []byte("3")})
	publish(amqp091.Publishing{Body: []byte("4"), Headers: amqp091.Table{"_watermill_message_uuid": []byte("u-4")}})

	ch, err := sub.Subscribe(t.Context(), topic)
	require.NoError(t, err)
	got := brokertest.Receive(t, ch, 4)
	require.Equal(t, "u-1", got[0].UUID)
	require.Equal(t, message.Metadata{"s": "x", "n": "7", "b": "raw", "f": "true"}, got[0].Metadata)
	require.Equal(t, "m-2", got[1].UUID)
	require.Equal(t, message.Metadata{"s": "y"}, got[1].Metadata)
	require.NotEmpty(t, got[2].UUID)
	require.NotContains(t, []string{"u-1", "m-2", "u-4"}, got[2].UUID)
	require.Equal(t, "u-4", got[3].UUID)
	for i, m := range got {
		require.Equal(t, strconv.Itoa(i+1), string(m.Payload))
	}
}

// TestMessageContext: a message's context ends once it is acked, and when
// its subscription ends.
func TestMessageContext(t *testing.T) {
	t.Parallel()
	topic := brokertest.RandomTopic()
	pub := newPublisher(t, topic)
	require.NoError(t, pub.Publish(topic, brokertest.KeyedMessages(2, 1)...))
	sub := newSubscriber(t, amqp.Config{})
	ctx, cancel := context.WithCancel(t.Context())
	ch, err := sub.Subscribe(ctx, topic)
	require.NoError(t, err)
	m := next(t, ch)
	require.NoError(t, m.Context().Err())
	m.Ack()
	require.Eventually(t, func() bool { return m.Context().Err() != nil }, time.Second, time.Millisecond)
	m = next(t, ch)
	cancel()
	require.Eventually(t, func() bool { return m.Context().Err() != nil }, time.Second, time.Millisecond)
}

// TestSilentBroker: a server that accepts the connection and never
// answers the AMQP handshake does not hold NewSubscriber past
// ConnectTimeout.
func TestSilentBroker(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer ln.Close()
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	})
	start := time.Now()
	_, err = amqp.NewSubscriber(t.Context(), amqp.Config{URL: "amqp://" + ln.Addr().String() + "/", ConnectTimeout: 500 * time.Millisecond})
	require.ErrorContains(t, err, "no answer within 500ms")
	require.Less(t, time.Since(start), 2*time.Second)
}

// TestCloseDuringDelivery closes the subscriber while a message is handed
// over and not acked, with two subscriptions: Close returns, the channels
// close, the acked messages stay acked, the held one returns to the
// queue, Subscribe fails with ErrClosed, and no goroutine is left.
//
// Not parallel: it counts the process's goroutines, which the parallel
// tests, paused meanwhile, do not change.
func TestCloseDuringDelivery(t *testing.T) {
	topics := []string{brokertest.RandomTopic(), brokertest.RandomTopic()}
	pub := newPublisher(t, topics[0])
	t.Cleanup(func() { _ = pub.DeleteTopic(context.Background(), topics[1]) })
	for _, topic := range topics {
		require.NoError(t, pub.Publish(topic, brokertest.KeyedMessages(50, 5)...))
	}
	base := runtime.NumGoroutine()

	sub, err := amqp.NewSubscriber(t.Context(), amqp.Config{URL: brokertest.AMQPURL(), Prefetch: 100})
	require.NoError(t, err)
	var chans []<-chan *message.Message
	for _, topic := range topics {
		ch, err := sub.Subscribe(t.Context(), topic)
		require.NoError(t, err)
		chans = append(chans, ch)
	}
	brokertest.Receive(t, chans[0], 5)
	held := next(t, chans[0])

	closed := make(chan error, 1)
	go func() { closed <- sub.Close() }()
	select {
	case err := <-closed:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		require.FailNow(t, "Close did not return")
	}
	for _, ch := range chans {
		select {
		case _, ok := <-ch:
			require.False(t, ok, "a message after Close")
		case <-time.After(time.Second):
			require.FailNow(t, "the channel is still open after Close")
		}
	}
	held.Ack() // too late; no effect
	require.NoError(t, sub.Close())
	_, err = sub.Subscribe(t.Context(), topics[0])
	require.ErrorIs(t, err, amqp.ErrClosed)
	require.ErrorIs(t, sub.SubscribeInitialize(topics[0]), amqp.ErrClosed)

	requireReady(t, topics[0], 45)
	requireReady(t, topics[1], 50)
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > base {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines, %d before NewSubscriber:\n%s", n, base, buf[:runtime.Stack(buf, true)])
	}
}
