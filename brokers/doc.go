// Package brokers connects the outbox forwarder and the consumers to a
// message broker chosen by URL, with each broker configured for outbox
// delivery: a publish counts only once the broker confirmed it, the
// outbox UUID travels as the broker's message id where it has one, and the
// partition key keeps its order where the broker can keep it.
//
//	""  or gochannel://          Watermill GoChannel, in process (default)
//	amqp://user:pass@host:5672/  RabbitMQ                package brokers/amqp
//	nats://host:4222             NATS JetStream          package brokers/natsjs
//	redis://host:6379/0          Redis Streams           package brokers/redisstream
//	kafka://host:9092[,host...]  Kafka                   package brokers/kafka
//
// [Open] returns a [Broker]: a message.Publisher for the forwarder
// (outbox.NewForwarder) and a message.Subscriber for the consumers (a
// Watermill Router). Each broker package can also be used alone; Open adds
// what a service needs around them:
//
//   - It starts without its broker. Open waits for one connection attempt;
//     when the broker does not answer, it returns a Broker that keeps
//     trying in the background with backoff (Options.MinReconnect to
//     Options.MaxReconnect) and logs one warning, not one line per try.
//     Meanwhile commands commit and their events wait in the outbox:
//     Publish fails at once with [ErrUnreachable], so the forwarder backs
//     off, and Subscribe returns a channel that starts delivering once the
//     broker answers. Only a malformed URL or invalid Options make Open
//     fail.
//   - [Broker.Health] says whether the broker answers now, for a health
//     endpoint; [Broker.WaitConnected] waits for the first connection, for
//     tools that cannot work without the broker.
//
// What "published" means, whether per-key order survives into the broker,
// what a crash duplicates and how each broker deduplicates is in each
// broker package's documentation and in docs/brokers.md.
package brokers
