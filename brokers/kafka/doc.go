// Package kafka connects the outbox to Apache Kafka: [NewPublisher] returns
// the Watermill publisher that outbox.NewForwarder relays to, and
// [NewSubscriber] the consumers' subscriber (watermill-kafka v3's, in a
// consumer group). Both are built on IBM/sarama.
//
//	pub, err := kafka.NewPublisher(ctx, kafka.Config{Brokers: []string{"localhost:9092"}})
//	fw, err := outbox.NewForwarder(store, pub, outbox.ForwarderConfig{})
//	sub, err := kafka.NewSubscriber(ctx, kafka.Config{Brokers: brokers, ConsumerGroup: "orders-read-model"})
//
// The publisher is this package's own, on a Sarama SyncProducer:
// watermill-kafka's publisher waits for each message's ack before it sends
// the next, one round trip per message, and the forwarder publishes up to
// 2,000 messages per call. The message mapping is watermill-kafka's
// (kafka.NewWithPartitioningMarshaler), so watermill-kafka's subscriber,
// and any consumer that reads Kafka headers, decodes what is published.
//
// # Message mapping
//
//   - Value: the message payload.
//   - Key: the outbox partition key (metadata outbox.MetadataPartitionKey,
//     "partition_key"); nil for a message without one.
//   - Headers: the message UUID as _watermill_message_uuid, and every
//     metadata entry (name, correlation_id, partition_key, trace context,
//     ...) as a header of the same name.
//
// # What a nil Publish means
//
// Publish returns nil only once the cluster acknowledged every message of
// the call with acks from all in-sync replicas (RequiredAcks = WaitForAll).
// How many replicas that is depends on the topic: with replication factor
// 3 and min.insync.replicas=2 (a broker or topic setting, not a client one)
// a message survives the loss of one broker; with min.insync.replicas=1,
// Kafka's default, "all in-sync replicas" can be the leader alone.
//
// # Order
//
// Per partition key, the order survives into the broker and to consumers:
//
//   - The key is the record key, and Sarama's hash partitioner sends one key
//     to one partition, which is ordered. Sarama hashes with FNV-1a, not
//     the murmur2 of the Java client: a Java producer puts the same key on
//     another partition (Config.Sarama can set Producer.Partitioner).
//     Adding partitions to a topic moves keys to other partitions; a key's
//     messages published before and after can then be consumed out of
//     order.
//   - Publish sends the whole call before it waits (SendMessages, batched per
//     partition), in the order of msgs. The idempotent producer
//     (Producer.Idempotent, with Net.MaxOpenRequests = 1, which it needs)
//     keeps that order through Sarama's retries: a retried message cannot
//     be overtaken by a later one of its partition.
//   - The forwarder publishes a key's events in commit order and never has
//     two of a key's batches in flight.
//   - watermill-kafka's subscriber hands over a partition's next message only
//     after the previous one was acked, and sends a nacked message again
//     (after 100ms) before the later ones. A consumer group gives each
//     partition to one member at a time.
//
// One exception: a Publish that fails partway. Its messages that were
// acknowledged stay in Kafka, and the forwarder publishes the call's
// messages again one by one, stopping at a key's first failure; a later
// message of a key acknowledged in the failed call then sits in the
// partition before the copy of an earlier one. Sarama fails or
// acknowledges a partition's batch as a unit, so this takes a failure in the
// middle of a partition's messages (for example a retry limit reached while
// a leader moves). Messages without a partition key are spread over the
// partitions at random and have no order.
//
// # Duplicates
//
// Delivery is at least once. A consumer sees a message twice when:
//
//   - the forwarder crashed (or lost the database) after Publish returned
//     and before it deleted the rows: the whole batch (up to
//     ForwarderConfig.BatchSize messages) is published again;
//   - a Publish failed partway: the messages acknowledged before the
//     failure are published again with the rest;
//   - a consumer crashed or its group rebalanced before its offsets were
//     committed (Sarama commits the marked offsets every second): the
//     messages since the last commit are delivered again.
//
// The idempotent producer deduplicates only Sarama's own retries within
// one producer session (producer ID and sequence number per partition): a
// produce request sent again after a lost response. It does not
// deduplicate a forwarder's second Publish of the same message after a
// crash or a failed Publish: that is a new send with new sequence numbers
// (and, after a failure, a new producer ID). Kafka has no deduplication by
// message ID; consumers deduplicate on the message UUID with the inbox
// (handlers/inbox).
//
// # Outages
//
// NewPublisher fails within Config.ConnectTimeout when the cluster does not
// answer. After that the publisher reconnects by itself: while the cluster
// is down, Publish returns errors (the batch in flight when it went away
// after Sarama's retries, later calls at once or within ConnectTimeout),
// and the first Publish after it is back succeeds. The forwarder backs off
// meanwhile and never parks rows during an outage. In the package's test,
// a kfake cluster stopped for 4s and started again on the same ports: 6
// batches and about 23 failed Publish calls during the outage, the first
// success about 0.1s after the restart, every event at the consumer group
// about 0.3s after it.
//
// A connect that outlives ConnectTimeout is abandoned and closed when it
// ends: against an address that accepts connections and never answers,
// Sarama waits Net.ReadTimeout (30s) per metadata attempt, up to two
// minutes. Publish itself has no deadline: once connected, it waits for
// Sarama's timeouts (Net.ReadTimeout per request, Producer.Retry.Max
// retries) when a broker stops answering without closing its connection.
//
// Sarama opens a circuit breaker per topic and per partition after three
// failed leader lookups in a row, and keeps it open for 10 seconds: a
// producer that failed through an outage would fail every message for up
// to 10s after the cluster is back. The publisher does not keep such a
// producer: after a failed Publish it closes its Sarama producer and client
// and connects again on the next call (at most once a second while
// connecting fails), with fresh breakers and a new producer ID.
//
// # Versions
//
// Config.Version defaults to sarama.V2_3_0_0. Against kfake
// (github.com/twmb/franz-go/pkg/kfake), watermill-kafka v3.0.6 with Sarama
// v1.43.3 works from V0_11_0_0 up to V2_3_0_0; from V2_4_0_0 on, the
// consumer group fails with "error decoding packet: invalid byteslice
// length" and reconnects in a tight loop (4,826 times in 20s in one
// run), receiving nothing. The
// idempotent producer needs at least V0_11_0_0.
//
// # Tests
//
// Sarama's go-metrics start a goroutine that never ends; a test binary that
// checks for leaked goroutines sets metrics.UseNilMetrics = true
// (github.com/rcrowley/go-metrics) before it creates any client, as this
// package's TestMain does. internal/devkafka runs a one-broker kfake for
// development.
package kafka
