package gormstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
)

// ErrPublisherClosed is returned by Publisher.Publish after Close.
var ErrPublisherClosed = errors.New("gormstore: publisher closed")

// Publisher is a Watermill message.Publisher that writes messages into the
// outbox table, so Watermill code (a cqrs.EventBus, a Router handler's
// output, the stock forwarder) can use the outbox. Where a message goes
// depends on its context (message.Message.Context):
//
//   - inside a handler run by the transactional middleware, it joins the
//     command's outbox (outbox.EmitMessage) and is saved at commit, with
//     the command's correlation and causation metadata;
//   - with a transaction from WithTx, it is written in that transaction;
//   - otherwise it is written in a transaction of its own.
//
// The partition key is read from the outbox.MetadataPartitionKey metadata.
// A message without a UUID gets a UUIDv7.
type Publisher struct {
	store  *Store
	closed chan struct{}
}

var _ message.Publisher = (*Publisher)(nil)

// NewPublisher returns a publisher writing into the store's table.
func NewPublisher(store *Store) (*Publisher, error) {
	if store == nil {
		return nil, fmt.Errorf("%w: nil store (create one with gormstore.New)", ErrInvalidConfig)
	}
	return &Publisher{store: store, closed: make(chan struct{})}, nil
}

// Publish writes msgs for topic; see Publisher for where they go.
func (p *Publisher) Publish(topic string, msgs ...*message.Message) error {
	select {
	case <-p.closed:
		return ErrPublisherClosed
	default:
	}
	if topic == "" {
		return fmt.Errorf("gormstore: publish: %w", outbox.ErrEmptyTopic)
	}
	// Messages that share a context are written together.
	for start := 0; start < len(msgs); {
		if msgs[start] == nil {
			return fmt.Errorf("gormstore: publish: %w: message %d", outbox.ErrNilEvent, start)
		}
		ctx := msgs[start].Context()
		end := start + 1
		for end < len(msgs) && msgs[end] != nil && msgs[end].Context() == ctx {
			end++
		}
		if err := p.publish(ctx, topic, msgs[start:end]); err != nil {
			return err
		}
		start = end
	}
	return nil
}

func (p *Publisher) publish(ctx context.Context, topic string, msgs []*message.Message) error {
	if _, _, ok := outbox.CollectorFrom(ctx); ok {
		return outbox.EmitMessage(ctx, topic, msgs...)
	}
	recs := make([]outbox.Record, len(msgs))
	for i, m := range msgs {
		if m.UUID == "" {
			m.UUID = outbox.NewUUID()
		}
		recs[i] = outbox.Record{Topic: topic, PartitionKey: m.Metadata.Get(outbox.MetadataPartitionKey), Message: m}
	}
	if tx, err := outbox.Tx(ctx); err == nil {
		return p.store.Save(ctx, tx, recs)
	}
	err := p.store.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		return p.store.Save(ctx, tx, recs)
	})
	if err == nil {
		p.store.NotifyCommitted()
	}
	return err
}

// Close makes later Publish calls fail. It does not close the database.
func (p *Publisher) Close() error {
	select {
	case <-p.closed:
	default:
		close(p.closed)
	}
	return nil
}
