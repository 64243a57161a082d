// Package app wires the example service together:
//
//	HTTP API ──Dispatch──▶ bus: Recover → Transactional → orders handlers
//	                         │  orders row + outbox rows, one transaction
//	                         ▼  Wake: Forwarder.Wake()
//	outbox table ──Forwarder──▶ Watermill Publisher ──▶ broker
//	broker ──▶ Watermill Subscriber ──▶ inbox.Consumer ──▶ projection
//	                                        │  inbox rows + read model, one transaction per batch
//	                                        ▼
//	GET /orders/{id} ◀── order_views
//
// A retention.Cleaner deletes inbox rows older than seven days, every
// minute. Everything runs in one process; only the broker (package brokers)
// and the database (package database) change with the configuration.
package app
