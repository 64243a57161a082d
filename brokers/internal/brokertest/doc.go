// Package brokertest holds the helpers that the tests of package brokers
// and of its broker packages share, so that each exists once: where the
// brokers of this machine run, random topic and group names, keyed
// messages, receiving with a timeout, the checks that messages arrived
// whole or in order per key, and servers of a test's own. What is
// particular to one broker (its config, its admin client) stays in that
// broker's tests.
//
// The tests run against real brokers; `make test` starts them
// (scripts/ensure-services.sh rabbitmq nats redis). A test whose broker
// is not there fails, saying how to start it; it is never skipped. Kafka
// runs in process, on kfake ([StartKafka]).
//
// # Brokers
//
// [AMQPURL], [NATSURL] and [RedisURL] return the shared brokers' URLs
// (TEST_AMQP_URL, TEST_NATS_URL, TEST_REDIS_URL, or the local default).
// [StartServer] runs a broker server of the test's own, for what the
// shared one must not do: run with other flags, or go away and come back
// ([Server.Stop], [Server.Start]). [SilentListener] and [FreePort] give
// addresses where a broker hangs or is not there.
//
// # Topics and messages
//
// [RandomName] and [RandomTopic] make names no other test uses;
// [NewTopic] also deletes the topic when the test ends. [Subscribe]
// subscribes for the test's duration. [KeyedMessages] builds messages
// spread over partition keys; [Receive] reads them back, acking each,
// and fails after [ReceiveTimeout]. [RequireSame] checks that they
// arrived whole and in order, [RequireKeyOrder] that they arrived once
// each and in order per key, [RequireNoMore] that nothing else arrives.
//
// The helpers that can fail take the test's [testing.TB] and fail it
// with [github.com/stretchr/testify/require]; what must be undone
// (closing, deleting, killing) they register with [testing.TB.Cleanup].
package brokertest
