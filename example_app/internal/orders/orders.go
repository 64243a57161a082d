package orders

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/txoutbox/txoutbox/bus"
	"github.com/txoutbox/txoutbox/example_app/internal/database"
	"github.com/txoutbox/txoutbox/outbox"
	"gorm.io/gorm"
)

// Errors of the order commands. The HTTP API maps them to status codes;
// compare with errors.Is.
var (
	// ErrNotFound: the order does not exist.
	ErrNotFound = errors.New("order not found")
	// ErrInvalid: the command is malformed (empty customer, amount not
	// positive, bad ID).
	ErrInvalid = errors.New("invalid command")
	// ErrConflict is matched by every business-rule violation below.
	ErrConflict = errors.New("conflict")
	// ErrAlreadyExists: PlaceOrder with the ID of an existing order.
	ErrAlreadyExists = fmt.Errorf("%w: order already exists", ErrConflict)
	// ErrAlreadyPaid: PayOrder on a paid order.
	ErrAlreadyPaid = fmt.Errorf("%w: order is already paid", ErrConflict)
	// ErrCancelled: PayOrder or CancelOrder on a cancelled order.
	ErrCancelled = fmt.Errorf("%w: order is cancelled", ErrConflict)
	// ErrPaid: CancelOrder on a paid order.
	ErrPaid = fmt.Errorf("%w: order is paid and cannot be cancelled", ErrConflict)
)

// Status is the state of an order.
type Status string

// Order states. An order is placed, then paid or cancelled; both end it.
const (
	StatusPlaced    Status = "placed"
	StatusPaid      Status = "paid"
	StatusCancelled Status = "cancelled"
)

// MaxIDLength bounds client-chosen order IDs.
const MaxIDLength = 64

// Order is the write model: the row the command handlers change, in the
// same transaction as the outbox rows of the events they emit.
type Order struct {
	// ID identifies the order.
	ID string `gorm:"primaryKey;size:64"`
	// Customer placed the order.
	Customer string `gorm:"not null"`
	// AmountCents is the order total in cents.
	AmountCents int64 `gorm:"not null"`
	// Status is the order's state.
	Status Status `gorm:"not null;size:16"`
	// Version counts the order's events: 1 after OrderPlaced.
	Version int `gorm:"not null"`
	// CreatedAt is when the order was placed.
	CreatedAt time.Time
	// UpdatedAt is when the order last changed.
	UpdatedAt time.Time
}

// TableName is the write model's table.
func (Order) TableName() string { return "orders" }

// Migrate creates or upgrades the orders table.
func Migrate(ctx context.Context, db *gorm.DB) error {
	return db.WithContext(ctx).AutoMigrate(&Order{})
}

// Register registers the handlers of PlaceOrder, PayOrder and CancelOrder on
// b. The bus must run them through middleware.Transactional: they write
// through outbox.Tx and emit with outbox.Emit.
func Register(b *bus.Bus) error {
	return errors.Join(
		bus.Register(b, Place),
		bus.Register(b, Pay),
		bus.Register(b, Cancel),
	)
}

// Place handles PlaceOrder: it creates the order and emits OrderPlaced.
func Place(ctx context.Context, cmd PlaceOrder) error {
	if err := cmd.Validate(); err != nil {
		return err
	}
	tx, err := outbox.Tx(ctx)
	if err != nil {
		return err
	}
	now := time.Now().UTC()
	o := Order{ID: cmd.OrderID, Customer: cmd.Customer, AmountCents: cmd.AmountCents, Status: StatusPlaced, Version: 1, CreatedAt: now, UpdatedAt: now}
	// A duplicate ID is a business error, not a failed statement (which
	// would abort a PostgreSQL transaction): it inserts nothing.
	res := tx.Exec(`INSERT INTO orders (id, customer, amount_cents, status, version, created_at, updated_at)
		VALUES (?, ?, ?, ?, ?, ?, ?) `+database.OnDuplicateIDDoNothing(tx),
		o.ID, o.Customer, o.AmountCents, o.Status, o.Version, o.CreatedAt, o.UpdatedAt)
	if res.Error != nil {
		return fmt.Errorf("place order %s: %w", o.ID, res.Error)
	}
	if res.RowsAffected == 0 {
		return fmt.Errorf("%w: %s", ErrAlreadyExists, o.ID)
	}
	return outbox.Emit(ctx, OrderPlaced{
		OrderID: o.ID, Customer: o.Customer, AmountCents: o.AmountCents,
		Version: o.Version, PlacedAt: now,
	})
}

// Pay handles PayOrder: a placed order becomes paid and OrderPaid is
// emitted. A paid order fails with ErrAlreadyPaid, a cancelled one with
// ErrCancelled, an unknown one with ErrNotFound.
func Pay(ctx context.Context, cmd PayOrder) error {
	if err := validID(cmd.OrderID); err != nil {
		return err
	}
	now := time.Now().UTC()
	o, err := transition(ctx, cmd.OrderID, StatusPaid, now, func(o Order) error {
		switch o.Status {
		case StatusPaid:
			return fmt.Errorf("%w: %s", ErrAlreadyPaid, o.ID)
		case StatusCancelled:
			return fmt.Errorf("%w: %s cannot be paid", ErrCancelled, o.ID)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return outbox.Emit(ctx, OrderPaid{OrderID: o.ID, AmountCents: o.AmountCents, Version: o.Version, PaidAt: now})
}

// Cancel handles CancelOrder: a placed order becomes cancelled and
// OrderCancelled is emitted. A paid order fails with ErrPaid, a cancelled
// one with ErrCancelled, an unknown one with ErrNotFound.
func Cancel(ctx context.Context, cmd CancelOrder) error {
	if err := cmd.Validate(); err != nil {
		return err
	}
	now := time.Now().UTC()
	o, err := transition(ctx, cmd.OrderID, StatusCancelled, now, func(o Order) error {
		switch o.Status {
		case StatusPaid:
			return fmt.Errorf("%w: %s", ErrPaid, o.ID)
		case StatusCancelled:
			return fmt.Errorf("%w: %s is already cancelled", ErrCancelled, o.ID)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return outbox.Emit(ctx, OrderCancelled{OrderID: o.ID, Reason: cmd.Reason, Version: o.Version, CancelledAt: now})
}

// transition loads the order, lets check veto the change, and moves it to
// status with a version bump. The UPDATE is conditional on the version it
// read (optimistic locking): when a concurrent command changed the order
// first, the order is read again and checked again, so two concurrent
// PayOrder commands pay once and the second gets ErrAlreadyPaid. It returns
// the order as updated.
func transition(ctx context.Context, id string, status Status, now time.Time, check func(Order) error) (Order, error) {
	tx, err := outbox.Tx(ctx)
	if err != nil {
		return Order{}, err
	}
	for range 5 {
		var o Order
		err := tx.Where("id = ?", id).Take(&o).Error
		if errors.Is(err, gorm.ErrRecordNotFound) {
			return Order{}, fmt.Errorf("%w: %s", ErrNotFound, id)
		}
		if err != nil {
			return Order{}, fmt.Errorf("load order %s: %w", id, err)
		}
		if err := check(o); err != nil {
			return Order{}, err
		}
		res := tx.Exec("UPDATE orders SET status = ?, version = version + 1, updated_at = ? WHERE id = ? AND version = ?",
			status, now, id, o.Version)
		if res.Error != nil {
			return Order{}, fmt.Errorf("update order %s: %w", id, res.Error)
		}
		if res.RowsAffected == 1 {
			o.Status, o.Version, o.UpdatedAt = status, o.Version+1, now
			return o, nil
		}
	}
	return Order{}, fmt.Errorf("%w: order %s keeps changing; try again", ErrConflict, id)
}

// ValidateID checks an order ID as the commands do: 1 to MaxIDLength
// characters of letters, digits, '-', '_' and '.'. The error wraps
// ErrInvalid.
func ValidateID(id string) error { return validID(id) }

// validID checks an order ID: 1 to MaxIDLength characters of letters,
// digits, '-', '_' and '.'.
func validID(id string) error {
	if id == "" {
		return fmt.Errorf("%w: missing order ID", ErrInvalid)
	}
	if len(id) > MaxIDLength {
		return fmt.Errorf("%w: order ID longer than %d characters", ErrInvalid, MaxIDLength)
	}
	if i := strings.IndexFunc(id, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.')
	}); i >= 0 {
		return fmt.Errorf("%w: order ID %q: only letters, digits, '-', '_' and '.' are allowed", ErrInvalid, id)
	}
	return nil
}
