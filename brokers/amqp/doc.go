// Package amqp publishes outbox messages to RabbitMQ and consumes them, over
// the AMQP 0-9-1 client github.com/rabbitmq/amqp091-go.
//
// # Topology
//
// A topic is a durable queue of the same name (Config.Queue changes the
// name), reached through RabbitMQ's default exchange with the queue name as
// the routing key: the topology of watermill-amqp's durable-queue config,
// so a [Subscriber], watermill-amqp's subscriber and any other AMQP
// consumer of that queue read what the [Publisher] sends. Consumers of one
// queue compete for its messages.
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
// queue. A [Subscriber] hands a queue's messages over in that order, the
// next one only after the previous one was acked or nacked (unless
// Config.Concurrent: see Concurrent delivery), and keeps the
// order through redeliveries while it holds one unacknowledged message at
// a time (Config.Prefetch 1, the default): a nacked message is requeued at
// its place and delivered again before the ones behind it. With a larger
// prefetch a requeued message arrives after the ones already prefetched.
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
// and the next one after it is back dials again. A subscription whose
// channel or connection closes logs it once, consumes again by itself
// (after 100ms, doubling to 5s between failed attempts), and keeps the
// channel Subscribe returned open meanwhile; the messages it had not
// acknowledged are redelivered.
//
// # Consuming fast
//
// A [Subscriber] acknowledges a run of handled messages with one basic.ack
// (multiple) instead of one frame per message, while more messages follow:
// up to min(Config.Prefetch/2, [MaxPendingAcks]) messages, none held back
// longer than [MaxAckDelay] (100ms); see [Subscriber] for when it sends
// them. Draining 5,000 messages with Prefetch 500 takes about 30 ack frames
// instead of 5,000. A crash then redelivers at most Prefetch messages, as
// before, of which at most min(Prefetch/2, MaxPendingAcks) were handled
// already. With Prefetch 1 every message is acknowledged on its own.
//
// # Concurrent delivery
//
// With Config.Concurrent a subscription hands over up to Prefetch
// unacknowledged messages at once, each as soon as it arrives and in queue
// order, and takes their acks and nacks in any order: what a consumer
// needs that batches messages and runs workers in parallel, keeping the
// order per partition key itself (inbox.Consumer of package
// handlers/inbox). Acks are still coalesced: one multiple ack covers the
// acked messages up to the highest delivery tag below which every
// delivery is settled; an ack above a message still being handled is
// sent on its own after at most [MaxAckDelay]; a nack goes at once. A
// Watermill Router handles each message in a goroutine of its own and
// would lose the queue's order: leave Concurrent off for routers. See
// [Subscriber].
//
// On the project's 2-core test machine, `go test -run '^$' -bench
// 'BenchmarkRelayBroker/broker=amqp' -benchtime 1x ./bench/` (Prefetch
// 1000), run alternately with this subscriber and with watermill-amqp
// v3.0.2's, relayed 11,100 to 11,700 events/s against 6,500 to 9,700, with
// RabbitMQ using 77 to 84µs of CPU per event against 96 to 242µs; in a
// slower hour of the same machine, 8,300 to 8,900 against 6,900 to 7,600.
// The subscriber is this package's own, on amqp091-go, for that and
// because watermill-amqp v3.0.2 has a data race in its reconnect code (see
// internal/chaos).
package amqp
