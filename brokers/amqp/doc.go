// Package amqp publishes outbox messages to RabbitMQ and consumes them, over
// the AMQP 0-9-1 client github.com/rabbitmq/amqp091-go.
//
// # Topology
//
// A topic is a durable queue of the same name (Config.Queue changes the
// name), reached through RabbitMQ's default exchange with the queue name as
// the routing key: the topology of watermill-amqp's durable-queue config,
// so a [NewSubscriber] consumer and any other AMQP consumer of that queue
// read what the [Publisher] sends. Consumers of one queue compete for its
// messages.
//
// # What "published" means
//
// [Publisher.Publish] returns nil only after RabbitMQ confirmed every
// message of the call (publisher confirms) and returned none of them as
// unroutable. Each message is published with the mandatory flag, so a
// message that no queue receives comes back (basic.return) and Publish
// fails with [ErrUnroutable] instead of counting a confirmed drop as
// delivered; the publisher also declares a topic's queue before its first
// publish on each connection, so the first events of a topic do not wait
// for the first consumer. Messages are persistent (delivery mode 2): on a
// durable queue a confirm means RabbitMQ has written them to disk.
//
// The messages of one call are all sent before the first confirm is
// awaited, on one channel, so RabbitMQ groups their disk writes; this is
// what makes the publisher fast (see docs/benchmarks.md). watermill-amqp's
// own publisher waits for each confirm before sending the next message.
//
// # Order, duplicates and deduplication
//
// A queue is FIFO and the messages of one Publish call go out on one channel
// in order, so the per-key order the outbox forwarder keeps survives into the
// queue. A consumer keeps it while it holds one unacknowledged message at a
// time (Config.Prefetch 1, the default): a nacked message is requeued at
// its place and delivered again before the ones behind it. With a larger
// prefetch a requeued message can arrive after later ones.
//
// A crash of the relay after RabbitMQ confirmed a batch and before the outbox
// recorded it republishes that batch: at most one batch per crash.
// RabbitMQ does not deduplicate; every message carries the outbox UUID as
// its AMQP message-id (and in the header _watermill_message_uuid, where
// watermill-amqp reads it), so consumers deduplicate on it, for example
// with the inbox of package handlers/inbox.
//
// # Outages
//
// [NewPublisher] and [NewSubscriber] connect at once and fail when RabbitMQ
// does not answer within Config.ConnectTimeout; the package brokers wraps
// them so that an application starts without its broker. After that the
// publisher reconnects by itself: a Publish while RabbitMQ is down fails,
// and the next one after it is back dials again. The subscriber reconnects
// through watermill-amqp.
package amqp
