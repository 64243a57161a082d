// Package orders is the write side of the example service: the Order
// table, the commands PlaceOrder, PayOrder and CancelOrder, their handlers
// with the business rules, and the events OrderPlaced, OrderPaid and
// OrderCancelled.
//
// The rules: an order is placed once (its ID is unique); a placed order can
// be paid or cancelled, once; a paid order cannot be cancelled; a cancelled
// order cannot be paid; a command on an unknown order fails with
// ErrNotFound. Each handler changes the order through the command's
// transaction (outbox.Tx) and emits one event with outbox.Emit, so the
// change and the event commit together or not at all.
package orders
