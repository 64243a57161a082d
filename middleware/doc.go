// Package middleware holds the command-bus middleware of txoutbox, above all
// [Transactional]: one GORM transaction per command, with the command's
// events written to the outbox inside it just before commit.
//
// # The transactional rule
//
// For a top-level command [Transactional] begins a transaction on the
// configured *gorm.DB, puts it (reachable with outbox.Tx) and an event
// collector (filled by outbox.Emit) into the context, and calls the handler.
// Only if the handler returns nil are the collected events encoded and saved
// through the outbox Store in that transaction, which then commits. A handler
// error, an Emit error, an encoding error or a panic rolls everything back:
// no business write and no event survives.
//
// # Nested commands
//
// A handler that dispatches another command with its own context joins the
// caller's transaction. The nested command runs inside a SAVEPOINT with a
// collector of its own. If it succeeds, its events join the caller's
// collector and are saved once, at the caller's commit. If it fails, the
// savepoint is rolled back: its writes and its events are discarded, and the
// caller may handle the error and still commit. If the savepoint cannot be
// rolled back because the transaction ended under the nested command (MySQL
// ends a deadlock victim's whole transaction, savepoints included), the
// top-level command fails even if its handler ignores the error: later
// statements through its transaction fail instead of running in autocommit
// mode, nothing is saved, and the command is run again when its error is
// retryable. A context that carries a
// transaction started by the application (outbox.WithTx) is joined the
// same way; the events are then saved into that transaction, and committing
// it is the application's job.
//
// # Panics
//
// Transactional rolls back and re-raises a handler's panic: it never turns a
// panic into a commit or hides it. Add [Recover] as the outermost middleware
// to turn panics into a *[PanicError] instead.
//
// # Retries
//
// A top-level command whose transaction fails with a PostgreSQL
// serialization failure (SQLSTATE 40001) or deadlock (40P01), or a MySQL
// deadlock (1213) or lock wait timeout (1205), in the handler or at commit,
// is run again from the start in a new transaction, up to
// TransactionalConfig.MaxRetries times. Events emitted by failed attempts are
// discarded. Handlers must therefore have no side effects outside the
// transaction (emit events instead).
//
// # Other buses
//
// Every adapter runs handlers through [Transactional.Run], with the rules
// above: [Transactional.Middleware] for this module's bus,
// [Transactional.CommandProcessorOnHandle] (and the event processor
// variants) for Watermill CQRS, [Transactional.HandlerMiddleware] for
// Watermill Router handlers, [Wrap] and [WrapResult] for other mediators
// and plain functions, and [Transactional.HTTP] for net/http. See
// docs/watermill.md.
package middleware
