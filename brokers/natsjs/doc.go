// Package natsjs publishes outbox messages to NATS JetStream and consumes
// them, over the official client github.com/nats-io/nats.go.
//
// # Streams and subjects
//
// A topic is the subject of the same name. By default a topic's stream is
// created on its first Publish (or Subscribe) when missing: named after the
// topic, storing that one subject, on file storage, without limits, with
// Config.Replicas and Config.DuplicateWindow. Topics must then be valid
// stream names (letters, digits, '-' and '_'). With
// Config.DisableAutoProvision the operator creates the streams (with the
// limits and retention they want, under any name, as long as one stores the
// topic's subject), and a Publish to a subject no stream stores fails with
// [ErrNoStream]: JetStream answers such a publish with "no responders",
// which Publish reports instead of counting a drop as delivered.
//
// [NewPublisher] and [NewSubscriber] check that the server has JetStream
// and fail with [ErrNoJetStream] if not (start nats-server with -js).
//
// # What "published" means
//
// [Publisher.Publish] returns nil only once JetStream acknowledged every
// message of the call (a PubAck): the message is in the stream, or it is a
// duplicate of a message already there (see below). On a single server
// the ack comes after the message was written to the stream's files, not
// after an fsync: nats-server syncs them periodically (every two minutes by
// default; sync_interval, from nats-server 2.10, can make it always), so a
// crash of the machine, not just of the server process, can lose recently
// acknowledged messages. On a cluster with Replicas 3 the ack comes once a
// majority of the replicas has the message.
//
// The messages of one call are all sent (PublishMsgAsync) before the first
// ack is awaited, so a batch costs about one round trip instead of one per
// message; watermill-nats's own publisher waits for each ack before it
// sends the next message. Config.PublishTimeout bounds the wait.
//
// The message mapping is watermill-nats's NATSMarshaler, which the
// watermill-nats subscriber of [NewSubscriber] decodes: the payload is the
// message data, the UUID is the header _watermill_message_uuid and every
// metadata entry is a header of its own. Metadata keys starting with
// "Nats-" are refused, as JetStream would read them as instructions.
//
// # Order
//
// The messages of one call go out on one connection in order, and
// JetStream stores them in that order, so the per-key order the outbox
// forwarder keeps survives into the stream as long as a call succeeds. A
// call that fails part-way (an ack error for one message, a timeout) may
// leave later messages of the batch stored before the failed one, which the
// forwarder publishes again: that message then sits behind them in the
// stream. While the connection is down, publishing fails at once
// (nats.ReconnectBufSize(-1)) instead of waiting in nats.go's reconnect
// buffer, which would send the rest of a failed batch after the reconnect.
//
// The subscriber hands a message to the handler, and the next one only
// after the previous one was acked or nacked, so a consumer sees the
// stream's order. A nacked message is delivered again after
// Config.NakDelay, behind the ones that went on meanwhile, and so is a
// message not acked within Config.AckWait (30s by default; the server may
// push up to its max_ack_pending, 1,000 by default, before the handler got
// to them, and those wait in the client): retry in place before nacking,
// and keep handlers well under AckWait per message times the backlog.
//
// # Duplicates and deduplication
//
// Every message is published with the Nats-Msg-Id header set to its UUID.
// JetStream drops a message whose ID it has seen within the stream's
// duplicate window (Config.DuplicateWindow, 2 minutes by default) and still
// acknowledges it (PubAck.Duplicate), so a batch the forwarder publishes
// again soon after a crash or a failed call is not stored twice. A crash
// can duplicate at most the batch in flight (the forwarder deletes rows only
// after Publish returned nil). Past the window, and for redeliveries of
// messages not acked in time, duplicates reach the consumer:
// deduplicate on the UUID there, for example with the inbox of package
// handlers/inbox.
//
// # Outages
//
// [NewPublisher] and [NewSubscriber] connect at once and fail when the
// server does not answer within Config.ConnectTimeout; the package brokers
// wraps them so that an application starts without its broker. After that
// the connection reconnects by itself, forever (nats.MaxReconnects(-1)): a
// Publish while the server is down fails, and Publish succeeds again once
// it is back, on the same Publisher. [Publisher.Ping] reports whether the
// connection is up, for health checks.
package natsjs
