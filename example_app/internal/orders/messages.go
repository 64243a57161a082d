package orders

import (
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Bounds of the text fields of the commands.
const (
	// MaxCustomerLength bounds PlaceOrder.Customer, in characters.
	MaxCustomerLength = 200
	// MaxReasonLength bounds CancelOrder.Reason, in characters.
	MaxReasonLength = 1000
)

// PlaceOrder places a new order.
type PlaceOrder struct {
	// OrderID identifies the new order; the caller chooses it (the HTTP
	// API generates a UUIDv7 when the client sends none), so a retried
	// request cannot place the order twice.
	OrderID string `json:"order_id"`
	// Customer is who places the order. Required.
	Customer string `json:"customer"`
	// AmountCents is the total in cents. Must be positive.
	AmountCents int64 `json:"amount_cents"`
}

// Validate checks the command before it touches the database.
func (c PlaceOrder) Validate() error {
	if err := validID(c.OrderID); err != nil {
		return err
	}
	if strings.TrimSpace(c.Customer) == "" {
		return fmt.Errorf("%w: missing customer", ErrInvalid)
	}
	if err := validText("customer", c.Customer, MaxCustomerLength, false); err != nil {
		return err
	}
	if c.AmountCents <= 0 {
		return fmt.Errorf("%w: amount_cents must be positive, got %d", ErrInvalid, c.AmountCents)
	}
	return nil
}

// PayOrder pays a placed order.
type PayOrder struct {
	// OrderID is the order to pay.
	OrderID string `json:"order_id"`
}

// CancelOrder cancels a placed order.
type CancelOrder struct {
	// OrderID is the order to cancel.
	OrderID string `json:"order_id"`
	// Reason says why; optional.
	Reason string `json:"reason,omitempty"`
}

// Validate checks the command before it touches the database.
func (c CancelOrder) Validate() error {
	if err := validID(c.OrderID); err != nil {
		return err
	}
	return validText("reason", c.Reason, MaxReasonLength, true)
}

// validText checks a free-text field: valid UTF-8, at most max characters,
// and no control characters (newlines and tabs allowed when multiline).
// PostgreSQL rejects a NUL byte in text and in JSON payloads, so without
// this check such a field failed in the database, as an internal error.
func validText(field, s string, max int, multiline bool) error {
	if !utf8.ValidString(s) {
		return fmt.Errorf("%w: %s is not valid UTF-8", ErrInvalid, field)
	}
	if n := utf8.RuneCountInString(s); n > max {
		return fmt.Errorf("%w: %s longer than %d characters", ErrInvalid, field, max)
	}
	if i := strings.IndexFunc(s, func(r rune) bool {
		return unicode.IsControl(r) && !(multiline && (r == '\n' || r == '\t' || r == '\r'))
	}); i >= 0 {
		r, _ := utf8.DecodeRuneInString(s[i:])
		return fmt.Errorf("%w: %s contains the control character %U at byte %d", ErrInvalid, field, r, i)
	}
	return nil
}

// The events. Their partition key is the order ID, so the events of one
// order are relayed and delivered in the order they were committed. The
// topic is not chosen here: the app puts all order events on one topic
// (outbox.EncoderConfig.Topic), because brokers order messages only within
// a topic (and a partition); the consumer tells them apart by the event
// name each message carries.
//
// Version is the order's version after the event: 1 for OrderPlaced, 2 for
// OrderPaid and OrderCancelled. The read model uses it to check that it
// applies an order's events in sequence.

// OrderPlaced says an order was placed.
type OrderPlaced struct {
	// OrderID is the order placed; also the partition key.
	OrderID string `json:"order_id"`
	// Customer placed it.
	Customer string `json:"customer"`
	// AmountCents is its total in cents.
	AmountCents int64 `json:"amount_cents"`
	// Version is 1.
	Version int `json:"version"`
	// PlacedAt is when the command ran.
	PlacedAt time.Time `json:"placed_at"`
}

// PartitionKey orders the events of one order.
func (e OrderPlaced) PartitionKey() string { return e.OrderID }

// OrderPaid says an order was paid.
type OrderPaid struct {
	// OrderID is the order paid; also the partition key.
	OrderID string `json:"order_id"`
	// AmountCents is the amount paid, in cents.
	AmountCents int64 `json:"amount_cents"`
	// Version is the order's version after the payment (2).
	Version int `json:"version"`
	// PaidAt is when the command ran.
	PaidAt time.Time `json:"paid_at"`
}

// PartitionKey orders the events of one order.
func (e OrderPaid) PartitionKey() string { return e.OrderID }

// OrderCancelled says an order was cancelled.
type OrderCancelled struct {
	// OrderID is the order cancelled; also the partition key.
	OrderID string `json:"order_id"`
	// Reason is the reason given, if any.
	Reason string `json:"reason,omitempty"`
	// Version is the order's version after the cancellation (2).
	Version int `json:"version"`
	// CancelledAt is when the command ran.
	CancelledAt time.Time `json:"cancelled_at"`
}

// PartitionKey orders the events of one order.
func (e OrderCancelled) PartitionKey() string { return e.OrderID }
