// Package walrelay relays events written as PostgreSQL logical decoding
// messages, the table-free write mode of the outbox, from a logical
// replication slot to a Watermill publisher.
//
// A command's events are written in its transaction with
// pg_logical_emit_message(true, prefix, content), content being the
// events framed by package internal/walmsg. Such a message is part of
// the transaction: it exists if and only if the transaction commits. A
// logical replication slot with the pgoutput plugin (PostgreSQL 14 or
// later, option messages 'true') streams the messages of committed
// transactions in commit order.
//
// # Set-up
//
// The server must run with wal_level=logical (ALTER SYSTEM SET wal_level
// = logical, and a restart); [Setup] and [Relay.Run] fail with
// [ErrWALLevel] otherwise. [Setup] creates the publication (one with no
// tables: messages are streamed whatever a publication holds) and the
// slot. Run it before the first event is written: a slot streams only
// what is written after it was created, and creating one waits for the
// transactions running at that moment.
//
// # Relaying
//
// [Relay.Run] opens a replication connection (replication=database) and
// takes a session advisory lock on it, derived from the slot's name: the
// relay holding it is the slot's one reader, and the lock ends with its
// stream. Other relays stand by and try again every PollInterval. The
// slot itself refuses a second reader too, so two never read at once.
//
// The reader starts the slot at its confirmed position
// (START_REPLICATION ... LOGICAL 0/0 with proto_version '1'), collects the
// messages with its prefix of each transaction from Begin to Commit,
// decodes them into rows and hands each committed transaction to a
// publisher goroutine, which publishes them in batches of up to
// BatchSize events through an [outbox.Engine]: per partition key in
// commit order. The relay confirms to the server (a standby status
// update) the end of the last transaction whose events were all
// published (CommitMessage.TransactionEndLSN), at most every
// StatusInterval, and at once when the server asks for a reply. When
// nothing is waiting to be published it confirms the server's WAL end
// from its keepalives, so that the slot does not hold WAL that other
// databases of the cluster wrote.
//
// After a crash or a restart the slot streams again every transaction
// whose end was not confirmed, whole: events are published at least
// once, and the duplicates are those published but not yet confirmed, at
// most StatusInterval's worth plus the batches in flight. Every event
// keeps its message UUID for consumers that deduplicate.
//
// A batch whose events fail to publish is retried after the engine's
// backoff (a publisher outage backs off as a whole, as in the table
// relay); the stream is not confirmed past a transaction until all its
// events were delivered.
package walrelay
