// Package redisstream publishes outbox messages to Redis Streams and
// consumes them, over the client github.com/redis/go-redis/v9.
//
// # Streams
//
// A topic is the stream (the Redis key) of the same name, created by the
// first XADD. The message mapping is watermill-redisstream's
// DefaultMarshallerUnmarshaller, which the watermill-redisstream subscriber
// of [NewSubscriber] decodes: an entry has the fields
// _watermill_message_uuid (the UUID), payload, and metadata (the metadata
// map in msgpack). The metadata key _watermill_message_uuid is refused.
//
// # What "published" means
//
// [Publisher.Publish] returns nil only once Redis replied to the XADD of
// every message of the call with the entry's ID: the entry is in the
// stream, in the memory of the server the client talks to. How durable
// that is depends on the server's persistence, not on this package:
//
//   - appendonly yes with appendfsync always: the entry is in the AOF,
//     fsynced, before the reply is sent.
//   - appendonly yes with appendfsync everysec (the usual setting): a
//     crash of the machine loses up to about one second of replied
//     entries.
//   - RDB snapshots only: a crash loses what was added since the last
//     snapshot.
//   - no persistence (appendonly no, save ""): a restart loses every
//     stream.
//
// Replication to replicas is asynchronous, so a failover can lose replied
// entries too. A Redis that loses an entry after the reply has lost an
// event for good: the outbox deleted its row once Publish returned nil.
//
// The messages of a call go in one MULTI/EXEC transaction written in one
// round trip (a go-redis TxPipeline): no per-message wait, where
// watermill-redisstream's own publisher waits for each XADD's reply. The
// transaction is all or nothing in the cases that matter here: Redis
// refuses the whole of it (EXECABORT) when a command cannot be queued (out
// of memory under maxmemory, for instance), and discards it when the
// connection breaks before EXEC. go-redis resends a transaction only after
// a failed write, never after a failed read, so it adds no copies of its
// own.
//
// # Order
//
// Entries of a stream are ordered by their IDs, which Redis assigns in the
// order it executes the XADDs; a transaction runs without other clients'
// commands in between. So the per-key order the outbox forwarder keeps
// survives into the stream, also across failed calls: a failed batch added
// nothing (except after a lost EXEC reply, below), and the forwarder
// publishes it again as a whole.
//
// The subscriber reads one entry at a time per consumer and hands over the
// next only after the previous one was acked, so one consumer sees the
// stream's order. A nacked entry is handed over again after
// Config.NackResendSleep, before any later entry: the subscriber retries
// it in place. Consumers of one group share a stream's entries and lose
// the order between them. An entry a dead consumer left pending is claimed
// by another after watermill-redisstream's MaxIdleTime (60s) and arrives
// late. An entry the unmarshaller cannot read (not written by this
// package's mapping) ends watermill-redisstream's subscription: its output
// channel closes.
//
// # Duplicates and deduplication
//
// Redis Streams do not deduplicate. A crash of the relay after EXEC and
// before the outbox deleted the rows, or a connection lost after EXEC
// reached Redis (Publish then fails although the entries were added), makes
// the forwarder publish the batch again: at most one batch per crash or
// failed call, in order, behind the first copy. Every entry carries the
// outbox UUID; consumers deduplicate on it, for example with the inbox of
// package handlers/inbox.
//
// # Retention
//
// By default (Config.MaxLen 0) Publish never trims: a stream keeps every
// entry until it is trimmed otherwise (XTRIM) or deleted
// ([Publisher.DeleteTopic]). With Config.MaxLen N every XADD trims the
// stream to about N entries (MAXLEN ~ N, which Redis does cheaply, whole
// macro-nodes at a time); trimming drops the oldest entries whether or not
// every consumer group read them.
//
// # Outages
//
// [NewPublisher] and [NewSubscriber] ping Redis and fail when it does not
// answer within Config.ConnectTimeout; the package brokers wraps them so
// that an application starts without its broker. After that go-redis
// dials again per command: a Publish while Redis is down fails, and Publish
// succeeds again once it is back, on the same Publisher.
// [Publisher.Ping] sends PING, for health checks.
package redisstream
