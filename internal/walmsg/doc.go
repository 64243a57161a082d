// Package walmsg frames the events of one command as the content of one
// PostgreSQL logical decoding message (pg_logical_emit_message): the
// write-ahead-log mode writes one such message per command in the
// command's transaction, and the WAL relay (package walrelay) reads it
// back from a replication slot. [Encode] writes a frame, [Decode] reads
// one.
//
// # Format, version 1
//
// A frame is a sequence of bytes. Its grammar, in order, with no padding
// and nothing after the last event:
//
//	frame   = version count event*count
//	version = byte 0x01
//	count   = uvarint                        number of events
//	event   = flags uuid topic key mcount pair*mcount payload
//	flags   = byte                           bit 0 (0x01): uuid is binary;
//	                                         bits 1-7: zero
//	uuid    = 16 bytes   when flags bit 0 is set: the UUID's 16 bytes in
//	                     RFC 9562 order, standing for its canonical text
//	                     form (lowercase hex, 8-4-4-4-12, 36 characters)
//	        | string     otherwise: the message UUID as it is
//	topic   = string
//	key     = string                         partition key, empty: unordered
//	mcount  = uvarint                        number of metadata pairs
//	pair    = string string                  metadata key, then its value
//	payload = string                         the message payload
//	string  = uvarint n, then n bytes
//
// A uvarint is an unsigned integer in base 128, least significant group
// first, as Go's encoding/binary writes it (LEB128): each byte carries 7
// bits of the value in its low bits and has its high bit (0x80) set when
// more bytes follow. It has at most 10 bytes and its value fits in 64
// bits. The encoder writes the shortest form; a decoder accepts longer
// ones.
//
// Strings are bytes: the encoder writes Go strings as they are, which are
// UTF-8 in practice but need not be. Metadata keys are distinct and in
// strictly increasing order of their bytes (unsigned, shorter first when
// one is a prefix of the other). The binary UUID form is an encoding
// choice, not a meaning: a decoder returns the canonical text form, and
// an encoder may always use the string form instead; the Go encoder uses
// the binary form exactly when the UUID is already in canonical text
// form, so a frame decodes to the very UUID strings that were encoded.
//
// A decoder rejects a frame whose first byte is not a version it knows,
// that ends inside a field, that has bytes after its last event, that
// sets a reserved flag bit, or whose metadata keys are out of order; this
// package reports these as [ErrUnknownVersion], [ErrTruncated] and
// [ErrMalformed]. A later version changes the first byte; version 1
// frames stay readable.
//
// Example: one event with UUID 0190b8e5-3c4f-7a1b-8c2d-0123456789ab
// (binary form), topic "orders", key "c-1", metadata {name: "X"} and
// payload "{}" is the 41 bytes
//
//	01 01                      version 1, 1 event
//	01                         flags: binary UUID
//	01 90 b8 e5 3c 4f 7a 1b 8c 2d 01 23 45 67 89 ab
//	06 6f 72 64 65 72 73       "orders"
//	03 63 2d 31                "c-1"
//	01                         1 metadata pair
//	04 6e 61 6d 65 01 58       "name" "X"
//	02 7b 7d                   "{}"
package walmsg
