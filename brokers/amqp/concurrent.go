package amqp

import (
	"context"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// settlement is a handled message's ack (ack true) or nack.
type settlement struct {
	tag uint64
	ack bool
}

// consumeConcurrent hands c's deliveries to out as they arrive, in order,
// without waiting for acks (Config.Concurrent), until ctx ends or the
// deliveries end; it returns why they ended.
func (s *Subscriber) consumeConcurrent(ctx context.Context, c *consumer, out chan<- *message.Message, log watermill.LoggerAdapter) error {
	acks := newConcurrentAcker(c.ch, s.maxPending, log)
	stop := make(chan struct{})
	var watchers sync.WaitGroup
	settled := make(chan settlement, s.cfg.Prefetch)
	defer func() {
		// Acks that came with the end still count: the watchers check
		// once more, and settled is read until the last one is done.
		close(stop)
		go func() {
			watchers.Wait()
			close(settled)
		}()
		for st := range settled {
			acks.settle(st)
		}
		acks.flush()
	}()
	var queue []*message.Message // received, not handed over yet
	for {
		var send chan<- *message.Message
		var head *message.Message
		var idle <-chan time.Time
		if len(queue) > 0 {
			send, head = out, queue[0]
		} else if acks.ackTo != 0 {
			// Nothing waits to be handed over: unless a delivery or an
			// ack comes within AckLinger, the subscription idles and
			// sends the acks up to the floor.
			acks.idle.Reset(AckLinger)
			idle = acks.idle.C
		}
		select {
		case d, ok := <-c.deliveries:
			if !ok {
				return c.lost()
			}
			msg := decode(&d)
			msgCtx, cancel := context.WithCancel(ctx)
			msg.SetContext(msgCtx)
			acks.received(d.DeliveryTag)
			queue = append(queue, msg)
			watchers.Go(func() {
				defer cancel()
				st := settlement{tag: d.DeliveryTag}
				select {
				case <-msg.Acked():
					st.ack = true
				case <-msg.Nacked():
				case <-stop:
					// An ack that came with the end still counts.
					select {
					case <-msg.Acked():
						st.ack = true
					case <-msg.Nacked():
					default:
						return
					}
				}
				// settled holds Prefetch, as many as RabbitMQ
				// delivers without an ack: this does not wait for long,
				// and after stop the deferred drain reads it.
				settled <- st
			})
		case send <- head:
			queue[0] = nil
			queue = queue[1:]
		case st := <-settled:
			acks.settle(st)
		case <-acks.due():
			acks.flush()
		case <-idle:
			acks.flushFloor()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// concurrentAcker acknowledges the messages of one channel handled in any
// order. Every delivery up to the floor is settled; the acks held up to
// it go as one multiple ack, which covers no other delivery. Above the
// floor, a lower delivery is not settled yet: the acks held there go
// singly, once the oldest held ack is MaxAckDelay old. Each delivery tag
// is acked or nacked on the wire once: a tag leaves state when the floor
// passes it, and one above the floor is marked once its ack or nack is
// sent.
type concurrentAcker struct {
	ch  *amqp091.Channel
	max int
	log watermill.LoggerAdapter
	// floor is the highest tag such that every delivery up to it is
	// settled (tags start at 1 on each channel); state tells the state of
	// each delivery above it.
	floor uint64
	state map[uint64]uint8
	// ackTo is the highest acked tag up to the floor whose ack was not
	// sent (0: none), below the number of acks up to the floor not sent,
	// n the number of all acks not sent.
	ackTo uint64
	below int
	n     int
	timer *time.Timer // MaxAckDelay after the oldest unsent ack
	armed bool        // timer runs: n > 0
	idle  *time.Timer // AckLinger, while nothing waits to be handed over
}

// The states of a delivery above the floor.
const (
	tagReceived uint8 = iota // handed over or waiting, not settled
	tagAcked                 // acked by the handler, ack not sent
	tagSent                  // nacked, or acked singly: nothing more to send
)

func newConcurrentAcker(ch *amqp091.Channel, maxPending int, log watermill.LoggerAdapter) *concurrentAcker {
	stopped := func() *time.Timer {
		t := time.NewTimer(time.Hour)
		t.Stop()
		return t
	}
	return &concurrentAcker{ch: ch, max: maxPending, log: log, state: map[uint64]uint8{}, timer: stopped(), idle: stopped()}
}

// received records a delivery of the channel, in delivery order.
func (a *concurrentAcker) received(tag uint64) { a.state[tag] = tagReceived }

// settle records a delivery's ack or nack. A nack is sent at once, after
// the acks held up to the floor.
func (a *concurrentAcker) settle(st settlement) {
	if s, ok := a.state[st.tag]; !ok || s != tagReceived {
		return // settled already
	}
	if st.ack {
		a.state[st.tag] = tagAcked
		a.n++
		if !a.armed {
			a.timer.Reset(MaxAckDelay)
			a.armed = true
		}
	} else {
		a.flushFloor()
		if err := a.ch.Nack(st.tag, false, true); err != nil {
			a.log.Debug("AMQP nack not sent; RabbitMQ redelivers the message", watermill.LogFields{"delivery_tag": st.tag, "error": err.Error()})
		}
		a.state[st.tag] = tagSent
	}
	for {
		s, ok := a.state[a.floor+1]
		if !ok || s == tagReceived {
			break
		}
		a.floor++
		if s == tagAcked {
			a.ackTo = a.floor
			a.below++
		}
		delete(a.state, a.floor)
	}
	if a.below >= a.max {
		a.flushFloor()
	}
}

// flushFloor sends the acks held up to the floor as one multiple ack up
// to the highest of them: every delivery up to it is settled, and the
// others were nacked or acked already, so it acknowledges exactly the
// held ones.
func (a *concurrentAcker) flushFloor() {
	if a.ackTo == 0 {
		return
	}
	if err := a.ch.Ack(a.ackTo, true); err != nil {
		a.log.Debug("AMQP ack not sent; RabbitMQ redelivers the messages", watermill.LogFields{
			"messages": a.below, "delivery_tag": a.ackTo, "error": err.Error(),
		})
	}
	a.n -= a.below
	a.ackTo, a.below = 0, 0
	if a.n == 0 && a.armed {
		a.timer.Stop()
		a.armed = false
	}
}

// due fires when the oldest unsent ack is MaxAckDelay old; it is nil
// (blocks) when none is held.
func (a *concurrentAcker) due() <-chan time.Time {
	if !a.armed {
		return nil
	}
	return a.timer.C
}

// flush sends every held ack: one multiple ack up to the floor, and a
// single ack for each held above it (a multiple ack there would also
// acknowledge the unsettled deliveries below it). It runs when the oldest
// held ack is MaxAckDelay old and when the subscription ends.
func (a *concurrentAcker) flush() {
	if a.armed {
		a.timer.Stop()
		a.armed = false
	}
	if a.n == 0 {
		return
	}
	a.flushFloor()
	for tag, s := range a.state {
		if s != tagAcked {
			continue
		}
		if err := a.ch.Ack(tag, false); err != nil {
			a.log.Debug("AMQP ack not sent; RabbitMQ redelivers the message", watermill.LogFields{"delivery_tag": tag, "error": err.Error()})
		}
		a.state[tag] = tagSent
	}
	a.n = 0
}
