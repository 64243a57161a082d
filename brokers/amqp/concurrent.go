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
		close(stop)
		watchers.Wait()
		// Acks that came with the end still count.
		for {
			select {
			case st := <-settled:
				acks.settle(st)
				continue
			default:
			}
			break
		}
		acks.flush()
	}()
	var queue []*message.Message // received, not handed over yet
	for {
		var send chan<- *message.Message
		var head *message.Message
		if len(queue) > 0 {
			send, head = out, queue[0]
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
				// settled holds Prefetch: RabbitMQ delivers no more
				// than Prefetch messages it has no ack for, so this
				// never waits for long; the deferred drain reads it.
				settled <- st
			})
		case send <- head:
			queue[0] = nil
			queue = queue[1:]
		case st := <-settled:
			acks.settle(st)
		case <-acks.due():
			acks.flush()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// concurrentAcker acknowledges messages handled in any order: all the
// acked ones up to the floor (below which every delivery is settled)
// with one multiple ack, and those held above it singly once the oldest
// held ack is MaxAckDelay old.
type concurrentAcker struct {
	ch  *amqp091.Channel
	max int
	log watermill.LoggerAdapter
	// floor is the highest tag such that every delivery up to it is
	// settled; above it, state tells each received delivery's state.
	floor uint64
	state map[uint64]uint8
	// ackTo is the highest acked tag up to floor whose ack was not sent
	// (0: none), below the number of such acks, n the number of all acks
	// not sent.
	ackTo uint64
	below int
	n     int
	timer *time.Timer // MaxAckDelay after the oldest unsent ack
	armed bool
}

// The states of a delivery above the floor.
const (
	tagReceived uint8 = iota // handed over or waiting, not settled
	tagAcked                 // acked by the handler, ack not sent
	tagSent                  // nacked, or acked singly: nothing more to send
)

func newConcurrentAcker(ch *amqp091.Channel, maxPending int, log watermill.LoggerAdapter) *concurrentAcker {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &concurrentAcker{ch: ch, max: maxPending, log: log, state: map[uint64]uint8{}, timer: t}
}

func (a *concurrentAcker) received(tag uint64) { a.state[tag] = tagReceived }

// settle records a handled delivery: a nack is sent at once.
func (a *concurrentAcker) settle(st settlement) {
	if _, ok := a.state[st.tag]; !ok {
		return // settled already
	}
	if st.ack {
		a.state[st.tag] = tagAcked
		a.n++
		a.arm()
	} else {
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

// flushFloor sends the held acks up to the floor as one multiple ack.
func (a *concurrentAcker) flushFloor() {
	if a.ackTo == 0 {
		return
	}
	if err := a.ch.Ack(a.ackTo, true); err != nil {
		a.log.Debug("AMQP ack not sent; RabbitMQ redelivers the messages", watermill.LogFields{"delivery_tag": a.ackTo, "error": err.Error()})
	}
	a.n -= a.below
	a.ackTo, a.below = 0, 0
	if a.n == 0 && a.armed {
		a.timer.Stop()
		a.armed = false
	}
}

// arm starts the MaxAckDelay timer unless it runs.
func (a *concurrentAcker) arm() {
	if !a.armed {
		a.timer.Reset(MaxAckDelay)
		a.armed = true
	}
}

// due fires when the oldest unsent ack is MaxAckDelay old; nil (blocks)
// when none is held.
func (a *concurrentAcker) due() <-chan time.Time {
	if !a.armed {
		return nil
	}
	return a.timer.C
}

// flush sends every held ack: one multiple ack up to the floor, single
// acks above it. It runs when the oldest held ack is MaxAckDelay old and
// when the subscription ends; min(Prefetch/2, MaxPendingAcks) acks up to
// the floor are sent at once (flushFloor).
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
