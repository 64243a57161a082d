// Package txoutbox is the root of the txoutbox module, a transactional
// outbox for CQRS command buses on GORM and Watermill. It holds no code;
// the packages are:
//
//   - bus: a small typed command bus (any bus works with the middleware).
//   - middleware: the transactional rule — each command in a GORM
//     transaction, its events written into the outbox just before
//     commit (NewTransactional), panics turned into errors (Recover).
//   - outbox: Tx and Emit for handlers (the command's transaction, its
//     events), the Encoder that turns events into Watermill messages
//     (optionally compressed), and the Forwarder that relays committed
//     rows to a publisher in per-key order, parking poison rows;
//     outbox/outboxtest: the conformance suites every backend runs.
//   - gormstore: the outbox table on PostgreSQL, MySQL/MariaDB and SQLite
//     (Store, Migrate), its admin (ListFailed, Requeue, Discard, Stats),
//     and the table as a Watermill Pub/Sub.
//   - brokers: Open a broker from a URL (RabbitMQ, NATS JetStream, Redis
//     Streams, Kafka, in-process GoChannel), with brokers/amqp,
//     brokers/natsjs, brokers/redisstream and brokers/kafka underneath.
//   - handlers: the event Registry consumers decode with; handlers/inbox:
//     exactly-once processing (Process, Middleware) and the batched,
//     key-ordered Consumer with its failed table; handlers/handlertest:
//     handler-level tests inside a rolled-back transaction.
//   - retention: periodic cleanup of delivered outbox rows and old inbox
//     rows.
//   - cmd/txoutbox: the operators' CLI (migrate, status, failed, inbox
//     failed, purge, version).
//   - examples: the runnable programs of docs/getting-started.md.
//
// The data path: a command handler writes through outbox.Tx(ctx) and
// emits events (outbox.Emit) → the
// middleware saves them in the command's transaction (gormstore.Store)
// → after commit the Forwarder claims the rows and publishes them
// (brokers) → an inbox.Consumer processes each message once in the
// consumer's own transaction. See README.md and docs/architecture.md.
package txoutbox
