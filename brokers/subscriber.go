package brokers

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

// subscriber is Broker.Subscriber: it subscribes once the broker answers.
type subscriber struct {
	b *Broker

	mu     sync.Mutex
	inner  message.Subscriber // created on the first Subscribe after connecting
	closed bool
	done   chan struct{} // closed by Close
	wg     sync.WaitGroup
}

func newSubscriber(b *Broker) *subscriber {
	return &subscriber{b: b, done: make(chan struct{})}
}

// Subscribe returns at once. The returned channel delivers topic's
// messages once the broker has answered and the broker package's
// subscriber has subscribed; until then it waits, retrying with the
// Broker's backoff. It is closed when ctx ends or the subscriber closes.
func (s *subscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	// Connected already: subscribe now, so that what is published after
	// Subscribe returns reaches the subscription (GoChannel keeps nothing
	// for a topic nobody subscribes to yet). A failure is retried in the
	// background.
	var in <-chan *message.Message
	select {
	case <-s.b.connected:
		var err error
		if in, err = s.trySubscribe(ctx, topic); errors.Is(err, ErrClosed) {
			return nil, err
		}
	default:
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	out := make(chan *message.Message)
	s.wg.Go(func() {
		defer close(out)
		if in == nil {
			in = s.subscribe(ctx, topic)
		}
		if in == nil {
			return
		}
		for m := range in {
			select {
			case out <- m:
			case <-ctx.Done():
				m.Nack()
			case <-s.done:
				m.Nack()
			}
		}
	})
	return out, nil
}

// subscribe waits for the broker, then subscribes, retrying with backoff.
// It returns nil when ctx ends or the Broker closes first.
func (s *subscriber) subscribe(ctx context.Context, topic string) <-chan *message.Message {
	select {
	case <-s.b.connected:
	case <-ctx.Done():
		return nil
	case <-s.done:
		return nil
	}
	wait := s.b.opts.MinReconnect
	for attempt := 1; ; attempt++ {
		in, err := s.trySubscribe(ctx, topic)
		if err == nil {
			if attempt > 1 {
				s.b.log.Info("subscribed", "topic", topic, "attempts", attempt)
			}
			return in
		}
		if errors.Is(err, ErrClosed) {
			return nil
		}
		if attempt == 1 {
			s.b.log.Warn("cannot subscribe; retrying in the background", "topic", topic, "error", err, "retry_in", wait)
		} else {
			s.b.log.Debug("still cannot subscribe", "topic", topic, "attempt", attempt, "error", err, "retry_in", wait)
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return nil
		case <-s.done:
			return nil
		}
		wait = min(2*wait, s.b.opts.MaxReconnect)
	}
}

func (s *subscriber) trySubscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	if s.inner == nil {
		cctx, cancel := context.WithTimeout(ctx, s.b.opts.ConnectTimeout)
		inner, err := s.b.backend.newSubscriber(cctx)
		cancel()
		if err != nil {
			return nil, err
		}
		s.inner = inner
	}
	return s.inner.Subscribe(ctx, topic)
}

// Close closes the broker package's subscriber and waits until every
// channel Subscribe returned is closed.
func (s *subscriber) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.done)
	inner := s.inner
	s.mu.Unlock()
	var err error
	if inner != nil {
		err = inner.Close()
	}
	s.wg.Wait()
	return err
}
