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
// A restart of the server can repeat more. Before PostgreSQL 17 the
// server writes a logical slot to disk only when its restart position or
// catalog xmin moves too, even at a clean shutdown: after a server
// restart the slot may stream again from a position older than the last
// the relay confirmed, back to the slot's creation at worst. A server's
// shutdown waits for the relay to confirm everything the server sent it:
// the relay goes on publishing meanwhile, and while the publisher is
// down the shutdown waits until the relay stops or publishes again.
//
// # Failures
//
// An event that fails to publish waits in memory for its retry, after
// the engine's backoff, with the later events of its partition key
// behind it; the other keys go on from the stream. After MaxAttempts
// failures the event is parked: written to the outbox table of
// Config.Table (a *gormstore.Store on PostgreSQL) with failed_at and its
// error, as the table relay parks a row, and the key's later events,
// from the stream and from memory, are written to the table behind it
// while the table holds an undelivered row of the key. The table's
// forwarder (outbox.NewForwarder on the same store) must run on that
// table: after the parked row is requeued (Store.Requeue and the admin
// CLI) or discarded, it delivers the key's events in order, and once
// the table has none of the key left the relay publishes the key's
// events from the stream again. A relay that starts reads the keys with
// undelivered rows in the table first, so a restart keeps a parked key's
// order. Without Config.Table an event to park is retried every
// MaxBackoff instead, and logged.
//
// The outage rule of the table relay applies: when nothing was published
// since rows of two or more keys failed (in one batch or in the batches
// since), or a publish failed with outbox.ErrPublisherUnavailable, the
// publisher is taken for down: nothing is parked, the failed events wait
// for the outage backoff and are tried again with the stream's next
// events.
//
// The slot is confirmed past a transaction only once each of its events
// was published or written to the table. Events held in memory are
// bounded (four batches); past that the stream waits until the held keys
// are published or parked.
//
// # Safety of the slot
//
// A slot keeps the WAL from its restart position on, whether a relay
// reads it or not: a relay that is stopped or behind makes PostgreSQL
// keep WAL, up to filling its disk. [Relay.Stats] reports the slot's lag
// (WAL written since its confirmed position), the WAL it retains, its
// wal_status and safe_wal_size; a running relay exports them as
// OpenTelemetry gauges (txoutbox.walrelay.slot.lag,
// txoutbox.walrelay.slot.retained_wal, txoutbox.walrelay.slot.safe_wal_size,
// on ForwarderConfig.MeterProvider) and logs a warning, at most every 5
// minutes, when the slot retains more than Config.WarnRetainedBytes
// (1 GiB by default).
//
// With max_slot_wal_keep_size set, the server invalidates a slot that
// falls further behind and removes its WAL: the events written in that
// WAL are gone from the stream. Run then returns [ErrSlotInvalidated]
// with what to do: drop the slot, create it again with Setup, and
// recover from the application the events committed between the slot's
// last confirmed position and the new slot. Before PostgreSQL 17 a slot
// exists only on its server and does not survive a failover to a
// standby; PostgreSQL 17 synchronises slots created with failover = true
// to standbys with sync_replication_slots = on. docs/operations.md ("The
// WAL relay") describes the settings.
package walrelay
