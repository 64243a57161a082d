// Package broker builds the Watermill publisher and subscriber of the
// example app from a BROKER_URL. It is the only place that knows which
// broker is used: the rest of the app sees a message.Publisher (for the
// outbox forwarder) and a message.Subscriber (for the consumers).
//
//	""  or gochannel://          Watermill GoChannel, in process (default)
//	amqp://user:pass@host:5672/  RabbitMQ, watermill-amqp/v3
//	nats://host:4222             NATS JetStream, watermill-nats/v2
//	redis://host:6379/0          Redis Streams, watermill-redisstream
//	kafka://host:9092[,host...]  Kafka, watermill-kafka/v3
//
// [ParseURL] checks a URL without connecting; [Open] connects and fails
// within a few seconds, with [ErrUnreachable], when the broker does not
// answer. Every publisher waits for the broker's confirmation: AMQP
// publisher confirms, JetStream acks, the XADD reply, Kafka acks from all
// in-sync replicas; GoChannel blocks until the subscriber acks.
package broker
