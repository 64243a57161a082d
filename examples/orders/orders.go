// Package orders is the handler-test example: a command
// handler with a business rule, tested in orders_test.go at handler level
// through the production middleware, with handlertest.
package orders

import (
	"context"
	"errors"
	"strings"

	"github.com/txoutbox/txoutbox/outbox"
)

// ErrNoCustomer rejects an order without a customer.
var ErrNoCustomer = errors.New("orders: customer is required")

// PlaceOrder is the command.
type PlaceOrder struct{ OrderID, Customer string }

// OrderPlaced is the event.
type OrderPlaced struct{ OrderID, Customer string }

// PartitionKey orders the events of one order.
func (e OrderPlaced) PartitionKey() string { return e.OrderID }

// Order is the business row.
type Order struct {
	ID       string `gorm:"primaryKey"`
	Customer string
}

// Place writes the order and emits OrderPlaced in the command's
// transaction. An order without a customer is rejected: nothing is written,
// nothing emitted.
func Place(ctx context.Context, cmd PlaceOrder) error {
	if strings.TrimSpace(cmd.Customer) == "" {
		return ErrNoCustomer
	}
	tx, err := outbox.Tx(ctx)
	if err != nil {
		return err
	}
	if err := tx.Create(&Order{ID: cmd.OrderID, Customer: cmd.Customer}).Error; err != nil {
		return err
	}
	return outbox.Emit(ctx, OrderPlaced{OrderID: cmd.OrderID, Customer: cmd.Customer})
}
