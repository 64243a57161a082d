// Package readmodel is the read side of the example service: a consumer
// that projects the order events it receives from the broker into the
// order_views table, which GET /orders/{id} reads.
//
// The projection runs behind the inbox (package handlers/inbox): each
// message is recorded in the inbox table in the same transaction as its
// read-model change, so a message the outbox or the broker delivers twice
// changes the read model once. Each applied event is also logged in
// projected_events, which the demo reads to prove that every event arrived
// exactly once. Events carry the order's version; the projection applies an
// order's events only in sequence and fails (so the message is retried) on
// a gap.
package readmodel
