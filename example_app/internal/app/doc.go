// Package app wires the example service together:
//
//	HTTP API ──Dispatch──▶ bus: Recover → Transactional → orders handlers
//	                         │  orders row + outbox rows, one transaction
//	                         ▼  AfterCommit: Forwarder.Wake()
//	outbox table ──Forwarder──▶ Watermill Publisher ──▶ broker
//	broker ──▶ Watermill Subscriber ──▶ Router ──▶ Retry → inbox → projection
//	                                                  │  inbox row + read model, one transaction
//	                                                  ▼
//	GET /orders/{id} ◀── order_views
//
// A retention.Cleaner deletes inbox rows older than seven days, every
// minute. Everything runs in one process; only the broker (package broker)
// and the database (package database) change with the configuration.
package app
