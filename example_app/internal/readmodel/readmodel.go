package readmodel

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/txoutbox/txoutbox/example_app/internal/database"
	"github.com/txoutbox/txoutbox/example_app/internal/orders"
	"github.com/txoutbox/txoutbox/handlers"
	"github.com/txoutbox/txoutbox/handlers/inbox"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
)

// Consumer is the projection's name in the inbox table.
const Consumer = "orders.read_model"

// ErrNotFound is returned by Get for an order the read model does not have
// (unknown, or not projected yet).
var ErrNotFound = errors.New("order not in the read model")

// ErrOutOfSequence is returned by the projection for an event that does not
// follow the order's last projected event. The message is then nacked and
// delivered again; with per-key ordering it never happens.
var ErrOutOfSequence = errors.New("event out of sequence")

// OrderView is the read model of an order: what GET /orders/{id} returns.
type OrderView struct {
	// ID identifies the order.
	ID string `gorm:"primaryKey;size:64" json:"id"`
	// Customer placed the order.
	Customer string `gorm:"not null" json:"customer"`
	// AmountCents is the order total in cents.
	AmountCents int64 `gorm:"not null" json:"amount_cents"`
	// Status is placed, paid or cancelled.
	Status orders.Status `gorm:"not null;size:16" json:"status"`
	// Version is the version of the last event applied.
	Version int `gorm:"not null" json:"version"`
	// CancelReason is the reason given with CancelOrder.
	CancelReason string `json:"cancel_reason,omitempty"`
	// PlacedAt, PaidAt and CancelledAt are the event times.
	PlacedAt time.Time `json:"placed_at"`
	// PaidAt is when the order was paid.
	PaidAt *time.Time `json:"paid_at,omitempty"`
	// CancelledAt is when the order was cancelled.
	CancelledAt *time.Time `json:"cancelled_at,omitempty"`
}

// TableName is the read model's table.
func (OrderView) TableName() string { return "order_views" }

// ProjectedEvent is the projection's log: one row per event applied, so
// the demo can check that every event was applied exactly once. Its
// message_uuid is deliberately not unique: a duplicate that got past the
// inbox would show up as a second row, not as an error.
type ProjectedEvent struct {
	// ID orders the rows.
	ID int64 `gorm:"primaryKey;autoIncrement"`
	// MessageUUID is the outbox message's UUID.
	MessageUUID string `gorm:"not null;size:64;index"`
	// OrderID is the event's order.
	OrderID string `gorm:"not null;size:64;index"`
	// Event is the event name.
	Event string `gorm:"not null;size:32"`
	// Version is the event's order version.
	Version int `gorm:"not null"`
	// ProjectedAt is when the projection applied it, in Unix nanoseconds,
	// taken inside the projection's transaction.
	ProjectedAt int64 `gorm:"not null"`
}

// TableName is the projection log's table.
func (ProjectedEvent) TableName() string { return "projected_events" }

// Migrate creates the read-model tables and the inbox table.
func Migrate(ctx context.Context, db *gorm.DB) error {
	if err := db.WithContext(ctx).AutoMigrate(&OrderView{}, &ProjectedEvent{}); err != nil {
		return fmt.Errorf("migrate read model: %w", err)
	}
	return inbox.Migrate(ctx, db)
}

// Get returns the read model of order id.
func Get(ctx context.Context, db *gorm.DB, id string) (OrderView, error) {
	var v OrderView
	err := db.WithContext(ctx).Where("id = ?", id).Take(&v).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return OrderView{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return v, err
}

// Stats counts what the projection did since it was created.
type Stats struct {
	// Applied counts events applied (their transaction may still roll
	// back; the consumer's Stats count what committed).
	Applied int64
	// Errors counts events the projection failed on (the consumer retries
	// them, then parks them).
	Errors int64
}

// Projector projects order events into the read model. Its Handler runs
// under an inbox.Consumer (see NewConsumer), in the consumer's transaction.
type Projector struct {
	registry *handlers.Registry
	now      func() time.Time

	applied, errs atomic.Int64
}

// NewProjector returns a projector decoding with reg, which must know the
// order events (see NewRegistry).
func NewProjector(reg *handlers.Registry) (*Projector, error) {
	if reg == nil {
		return nil, errors.New("readmodel: NewProjector needs a registry")
	}
	return &Projector{registry: reg, now: time.Now}, nil
}

// NewRegistry returns an event registry with the order events registered,
// decoding with the given marshaler's names (pass the outbox encoder's).
func NewRegistry(cfg handlers.RegistryConfig) (*handlers.Registry, error) {
	reg := handlers.NewRegistry(cfg)
	err := errors.Join(
		handlers.RegisterEvent[orders.OrderPlaced](reg),
		handlers.RegisterEvent[orders.OrderPaid](reg),
		handlers.RegisterEvent[orders.OrderCancelled](reg),
	)
	return reg, err
}

// Stats returns the projector's counters.
func (p *Projector) Stats() Stats {
	return Stats{Applied: p.applied.Load(), Errors: p.errs.Load()}
}

// Handler returns the projection as a handler for an inbox.Consumer: it
// decodes the event and applies it in the transaction of the message's
// context (outbox.Tx). An event the registry does not know fails with
// handlers.ErrUnknownEvent, one that does not follow the order's last
// event with ErrOutOfSequence.
func (p *Projector) Handler() message.NoPublishHandlerFunc {
	applied := p.registry.HandlerFunc(p.apply)
	return func(msg *message.Message) error {
		if err := applied(msg); err != nil {
			p.errs.Add(1)
			return err
		}
		p.applied.Add(1)
		return nil
	}
}

// NewConsumer returns the inbox consumer that runs the projection on
// topic, with cfg's tuning (Workers, BatchSize, ...): its Name is
// Consumer, its Handler p's.
func NewConsumer(in *inbox.Inbox, p *Projector, sub message.Subscriber, topic string, cfg inbox.ConsumerConfig) (*inbox.Consumer, error) {
	cfg.Name = Consumer
	cfg.Topics = []string{topic}
	cfg.Subscriber = sub
	cfg.Handler = p.Handler()
	return in.NewConsumer(cfg)
}

// apply applies one decoded event in the inbox's transaction.
func (p *Projector) apply(msg *message.Message, event any) error {
	tx, err := outbox.Tx(msg.Context())
	if err != nil {
		return err
	}
	var (
		orderID string
		version int
		name    string
	)
	switch e := event.(type) {
	case orders.OrderPlaced:
		orderID, version, name = e.OrderID, e.Version, "OrderPlaced"
		if e.Version != 1 {
			return fmt.Errorf("%w: OrderPlaced of %s has version %d", ErrOutOfSequence, e.OrderID, e.Version)
		}
		res := tx.Exec(`INSERT INTO order_views (id, customer, amount_cents, status, version, placed_at)
			VALUES (?, ?, ?, ?, ?, ?) `+database.OnDuplicateIDDoNothing(tx),
			e.OrderID, e.Customer, e.AmountCents, orders.StatusPlaced, e.Version, e.PlacedAt)
		if res.Error != nil {
			return res.Error
		}
		if res.RowsAffected == 0 {
			return fmt.Errorf("%w: OrderPlaced of %s, which is already in the read model", ErrOutOfSequence, e.OrderID)
		}
	case orders.OrderPaid:
		orderID, version, name = e.OrderID, e.Version, "OrderPaid"
		if err := advance(tx, e.OrderID, e.Version, "status = ?, paid_at = ?", orders.StatusPaid, e.PaidAt); err != nil {
			return err
		}
	case orders.OrderCancelled:
		orderID, version, name = e.OrderID, e.Version, "OrderCancelled"
		if err := advance(tx, e.OrderID, e.Version, "status = ?, cancelled_at = ?, cancel_reason = ?", orders.StatusCancelled, e.CancelledAt, e.Reason); err != nil {
			return err
		}
	default:
		return fmt.Errorf("readmodel: unexpected event %T", event)
	}
	return tx.Create(&ProjectedEvent{
		MessageUUID: msg.UUID, OrderID: orderID, Event: name, Version: version,
		ProjectedAt: p.now().UnixNano(),
	}).Error
}

// advance applies an event with the given version to an order whose read
// model is at version-1.
func advance(tx *gorm.DB, id string, version int, set string, args ...any) error {
	args = append(args, version, id, version-1)
	res := tx.Exec("UPDATE order_views SET "+set+", version = ? WHERE id = ? AND version = ?", args...)
	if res.Error != nil {
		return res.Error
	}
	if res.RowsAffected == 0 {
		var have int
		tx.Raw("SELECT version FROM order_views WHERE id = ?", id).Scan(&have)
		return fmt.Errorf("%w: order %s: event version %d, read model at version %d", ErrOutOfSequence, id, version, have)
	}
	return nil
}
