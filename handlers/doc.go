// Package handlers holds helpers for the two kinds of handlers around an
// outbox: command handlers that emit events, and consumers that receive them
// from a broker.
//
// # Command handlers
//
// A command handler changes state through outbox.Tx(ctx) and emits
// events with outbox.Emit. That is the one way to emit events; [Returning]
// only adapts handlers written as functions that return their events (a
// decision function such as "given this command and state, these events")
// to it. Prefer plain Emit calls; use Returning where a handler is naturally
// such a function, for example when the same logic is unit tested without a
// context.
//
// # Consumers
//
// On the consuming side, a [Registry] maps event names to Go types, so a
// consumer decodes a received message into the type the producer emitted,
// with the same Watermill cqrs marshaler the outbox encoder uses. An event
// name nobody registered gives an error wrapping [ErrUnknownEvent], or, when
// the registry is configured so, the message is acked and logged.
//
// Delivery from the outbox is at least once, so consumers see duplicates.
// Package github.com/txoutbox/txoutbox/handlers/inbox records each processed
// message in the consumer's own transaction and acks a redelivered one
// without running the handler again.
//
// Package github.com/txoutbox/txoutbox/handlers/handlertest runs command
// handlers in tests and reads back the events they emitted.
package handlers
