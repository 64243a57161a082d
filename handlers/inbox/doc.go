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
//			tx, err := gormstore.Tx(msg.Context()) // the inbox's transaction
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
// # The table
//
// [Inbox.Migrate] or [Migrate] creates the table (default "txoutbox_inbox",
// configurable, optionally schema-qualified on PostgreSQL); the same DDL
// ships as plain SQL files in [Migrations] (golang-migrate layout).
// PostgreSQL and SQLite (github.com/glebarez/sqlite) are supported. Rows are
// kept until [Inbox.Cleanup] deletes those older than a retention window,
// in small batches; the window must exceed the longest time a duplicate can
// arrive ([DefaultRetention] is a conservative start).
package inbox
