// Package handlertest runs command handlers in tests, through the same
// transactional middleware and encoder as production, and reads back the
// events they emitted.
//
// # Two modes
//
// With Config.DB set, [New] begins a transaction on that database for the
// test and rolls it back when the test ends, so tests can run in parallel on
// one database and leave nothing behind. Each command runs through
// middleware.Transactional inside a savepoint of that transaction, the way
// a command joins an application's transaction: the handler's writes
// (through outbox.Tx) are visible to the test through [Kit.Tx], a failing
// handler's writes are rolled back to its savepoint, and the events are
// encoded and written to the outbox table through the Store, whose input the
// kit records. PostgreSQL, MySQL/MariaDB and SQLite are supported; on
// SQLite the test's transaction holds the write lock for the whole test,
// so use one kit per test and give each parallel test its own database
// file.
//
// Without a database, the handler runs with an outbox collector in its
// context and its events are encoded by the same [outbox.Encoder]: an event
// the marshaler cannot encode fails the command here exactly as it fails
// it in production. Use it for handlers that touch no database.
//
// # Running commands
//
//   - [Call] runs one handler with a command.
//   - [Kit.Dispatch] dispatches a command on a bus, usually the
//     application's own bus built with its production middleware. In
//     database mode its Transactional middleware joins the kit's command as
//     a nested command, so its events are recorded too; pass the production
//     encoder in Config.Encoder, because the kit's command encodes them.
//   - [Kit.Run] runs any function as a command, for example a Watermill
//     consumer behind the inbox: give the message the function's context
//     and the inbox joins the test's transaction.
//
// Each returns a [Recording]: the command's error ([Recording.Err]), or the
// emitted messages in order ([Recording.Records], with topic, partition key
// and metadata; [Recording.Names]).
//
// # Assertions
//
// [Emitted] decodes the events of one type with the encoder's marshaler,
// [NoEvents] and [EmittedNames] check what was emitted, in order. They take
// a testing.TB, stop the test with Fatalf like testify's require, and their
// messages say what was expected and list what was emitted (name, topic,
// partition key). They also fail when the command failed, quoting its error,
// so an ignored error never passes as "no events".
//
// The test's transaction never commits, so AfterCommit hooks do not run and
// nothing is relayed; see docs/testing-handlers.md.
package handlertest
