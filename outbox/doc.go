// Package outbox turns domain events emitted by a command handler into
// Watermill messages and hands them to a [Store] inside the command's
// transaction.
//
// It is the backend-neutral core of txoutbox:
//
//   - [Tx] returns the command's GORM transaction, the one the handler writes
//     through, and [Emit] records events, from inside a handler that runs
//     under the transactional middleware (package middleware). Outside such
//     a handler both fail with [ErrNoTransaction]; nothing is ever dropped
//     silently. [WithTx] puts a transaction of your own into a context.
//   - A [Collector] holds the events of one command until the middleware saves
//     them, just before commit. Events of a handler that fails are discarded
//     with its transaction.
//   - An [Encoder] turns each event into a [Record]: a *message.Message with a
//     time-ordered UUIDv7, a payload from a Watermill cqrs marshaler (JSON by
//     default), metadata (event name, correlation and causation IDs, created
//     at), the topic and the partition key.
//   - [Store] is the seam to the outbox table; package gormstore implements it.
//   - A [Forwarder] relays the committed rows of a [RelayStore] to a Watermill
//     publisher. Its [Engine] publishes a batch of rows in key order and
//     decides between retrying and parking each row that fails; a relay
//     that reads its rows from another source publishes through one too.
//
// # Topic and partition key
//
// The topic of an event is, in order of precedence, the result of its
// Topic() string method, [EncoderConfig.Topic], or the event name (the
// marshaler's Name, by default the struct name such as "OrderPlaced").
// The partition key is the result of its PartitionKey() string method,
// [EncoderConfig.PartitionKey], or empty. Events with the same non-empty
// partition key are relayed in commit order; an empty key means no ordering
// is required.
//
// # Metadata
//
// Every message carries these metadata keys: [MetadataName],
// [MetadataCorrelationID], [MetadataCausationID], [MetadataCommand] and
// [MetadataCreatedAt]; [MetadataPartitionKey] when the key is not empty.
//
// # Compression
//
// [EncoderConfig.Compressor] compresses large payloads before they are
// stored ([Zstd], [Gzip], or any [Compressor]); a compressed row carries
// [MetadataContentEncoding]. The [Forwarder] publishes the original bytes
// and drops the key, or, with [ForwarderConfig.PublishCompressed], the
// stored bytes with the key; a row that does not decompress is parked with
// the reason. [Decompress] does the same for a consumer.
package outbox
