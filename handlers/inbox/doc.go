// Package inbox makes consumers of outbox messages process each message
// once, although the outbox delivers at least once.
//
// Every message the outbox emits keeps the UUID it got when it was emitted,
// across redeliveries. The inbox is a table of (consumer, message UUID,
// received_at) rows. [Inbox.Process] inserts the row and runs the consumer's
// work in the same GORM transaction; [Inbox.Middleware] does that for a
// Watermill handler:
//
//	in, err := inbox.New(db, inbox.Config{})
//	...
//	router.AddConsumerHandler("billing.charge", "OrderPlaced", sub,
//		func(msg *message.Message) error {
//			tx, err := outbox.Tx(msg.Context()) // the inbox's transaction
//			if err != nil {
//				return err
//			}
//			return tx.Create(&Charge{MessageUUID: msg.UUID}).Error
//		}).AddMiddleware(in.Middleware("billing.charge"))
//
// # What it guarantees
//
//   - The consumer's database writes commit at most once per message and
//     consumer: a redelivered message, also one redelivered because the
//     consumer crashed after its commit but before its ack, finds the row
//     and is acked without running the handler.
//   - A handler error rolls back the writes and the row: the message is
//     nacked, redelivered and processed again.
//   - Two deliveries of the same message processed at once (two instances
//     of a consumer) run the handler's commit once: the table's primary key
//     makes the second insert wait for the first transaction.
//
// Together with the outbox this gives effectively-once processing: the
// handler's writes and the events it emits (commands dispatched with the
// message's context join the inbox transaction) commit with the inbox row.
// Effects outside the database (an HTTP call, an e-mail) are not covered;
// they may repeat when a transaction fails after them.
//
// # The Consumer
//
// [Inbox.Middleware] under a Watermill router processes one message per
// transaction, in order, and retries a message it cannot process for as
// long as it fails, holding up every message behind it. [Consumer] is the
// inbox's own consumer, for the producer's pace:
//
//	c, err := in.NewConsumer(inbox.ConsumerConfig{
//		Name:       "billing.charge",
//		Topics:     []string{"orders"},
//		Subscriber: sub,
//		Handler:    reg.HandlerFunc(apply), // runs in the batch's transaction
//	})
//	...
//	go c.Run(ctx)
//
// What it does:
//
//   - Batches: a worker processes up to BatchSize messages in one
//     transaction: one statement records their inbox rows (on MySQL a
//     second one reads back which were new; the duplicates are acked
//     without running the handler), the handlers run, and the
//     batch is acked after the commit. When a handler fails, the
//     transaction is rolled back and the batch runs again with each
//     handler in a savepoint of its own (and so do the worker's next 16
//     batches), so a failing message rolls back only its own writes; the
//     handlers before it run twice, only the committed run counts. A crash between
//     commit and ack redelivers messages the inbox then finds.
//   - Workers: messages of one partition key (the outbox's
//     "partition_key" metadata) go to one of Workers workers, in the
//     order they arrive; other keys run in parallel. On a single queue
//     this is what makes one queue fast without losing per-key order; on
//     a broker that partitions by key (Kafka) it composes with the
//     partitions.
//   - Failures: a failed message is retried with backoff (its key waits,
//     others go on); after MaxAttempts, or at once for an error wrapping
//     [ErrPermanent] or handlers.ErrDecode, it is recorded in the failed
//     table with its payload, metadata, error and attempts, and acked.
//     Under [KeyWait] (the default) its key's later messages are recorded
//     behind it as held; [Inbox.Retry] (or the CLI's "txoutbox inbox
//     failed retry") makes the running consumer process them again, in
//     order, and [Inbox.Discard] drops a message and lets its key go on.
//     An unknown event (handlers.ErrUnknownEvent) is parked at once
//     ([UnknownPark]) or acked and counted ([UnknownSkip]).
//   - Outages: when a batch's transaction fails (the database is away),
//     the batch is retried with backoff and nothing is charged to its
//     messages; nothing is parked.
//   - Metrics and health: OpenTelemetry counters of processed, duplicate,
//     failed, parked, held and skipped messages, the in-flight gauge, the
//     lag histogram (now − the event's created_at) and the batch size
//     (see docs/operations.md); [Consumer.Health] reports a consumer that
//     made no progress for StallAfter while messages wait.
//
// Batches and workers need a subscriber that hands over the next message
// before the previous one is acked: brokers/amqp with Config.Concurrent, a
// Watermill GoChannel without BlockPublishUntilSubscriberAck (which loses
// the order of messages published together; the brokers package's
// in-process broker sets it, and hands over one at a time). Most
// Watermill subscribers (watermill-kafka per
// partition, watermill-nats, watermill-redisstream) hand over one message
// at a time until it is acked: the Consumer then works with batches of one,
// keeping every guarantee above. A batch is what has arrived while the
// previous one ran (BatchWait 0), so batches grow with the load and a
// message never waits for others.
//
// # The tables
//
// [Inbox.Migrate] or [Migrate] creates the table (default "txoutbox_inbox",
// configurable, optionally schema-qualified on PostgreSQL and MySQL) and the
// failed table (its name followed by "_failed", in the same schema); the
// same DDL ships as plain SQL files in [Migrations] (golang-migrate layout).
// PostgreSQL, MySQL 8.0+ and MariaDB 10.6+ (gorm.io/driver/mysql) and SQLite
// (github.com/glebarez/sqlite) are supported. Rows are
// kept until [Inbox.Cleanup] deletes those older than a retention window,
// in small batches; the window must exceed the longest time a duplicate can
// arrive ([DefaultRetention] is a conservative start).
package inbox
