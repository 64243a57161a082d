// Package examples holds the runnable programs of docs/getting-started.md,
// one folder each: minimal (command, outbox, forwarder, subscriber on
// SQLite and GoChannel), topics (the ordering rule of topics), inbox
// (exactly-once consumption), orders (a handler and its handler-level
// tests) and rabbitmq (PostgreSQL and RabbitMQ). Each has a test that runs
// it; this package's test checks that the guide shows them as they are.
package examples
