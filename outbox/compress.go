package outbox

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/klauspost/compress/zstd"
)

// MetadataContentEncoding names the compression of a message's payload
// ("gzip", "zstd"). The encoder sets it on the rows it compresses; the
// forwarder removes it when it publishes the original bytes, and keeps it
// with ForwarderConfig.PublishCompressed. Absent means a plain payload.
const MetadataContentEncoding = "content_encoding"

// DefaultCompressMinBytes is the default EncoderConfig.CompressMinBytes:
// payloads smaller than 1 KiB are stored plain, where compression saves
// little and costs a header.
const DefaultCompressMinBytes = 1024

// MaxDecompressedBytes bounds what the built-in compressors decompress one
// payload to (64 MiB), so a corrupt or hostile payload cannot exhaust
// memory. A payload that decompresses to more fails with
// ErrDecompress.
const MaxDecompressedBytes = 64 << 20

// ErrDecompress is returned for a payload whose content encoding is
// unknown or that does not decompress. The forwarder parks such a row with
// the error as its reason.
var ErrDecompress = errors.New("outbox: cannot decompress payload")

// A Compressor compresses payloads on their way into the outbox
// (EncoderConfig.Compressor) and decompresses them on their way out (the
// forwarder, handlers.Registry). Implementations must be safe for
// concurrent use. Gzip and Zstd are built in; a custom one is given to
// the reading side through ForwarderConfig.Compressors and
// handlers.RegistryConfig.Compressors.
type Compressor interface {
	// Encoding names the compression: the value of
	// MetadataContentEncoding, stored with each compressed row.
	Encoding() string
	// Compress returns p compressed.
	Compress(p []byte) ([]byte, error)
	// Decompress returns p decompressed, failing for corrupt input and for
	// output larger than MaxDecompressedBytes.
	Decompress(p []byte) ([]byte, error)
}

// Gzip returns a gzip Compressor (the standard library's compress/gzip)
// at level, one of gzip.BestSpeed (1) to gzip.BestCompression (9), or
// gzip.DefaultCompression (-1) for the default. An invalid level
// becomes the default.
func Gzip(level int) Compressor {
	if level < gzip.HuffmanOnly || level > gzip.BestCompression {
		level = gzip.DefaultCompression
	}
	c := &gzipCompressor{}
	c.writers.New = func() any {
		w, _ := gzip.NewWriterLevel(nil, level) // level checked above
		return w
	}
	return c
}

type gzipCompressor struct {
	writers sync.Pool // *gzip.Writer: one costs ~800 KB to create
	readers sync.Pool // *gzip.Reader
}

func (*gzipCompressor) Encoding() string { return "gzip" }

func (c *gzipCompressor) Compress(p []byte) ([]byte, error) {
	var buf bytes.Buffer
	buf.Grow(len(p)/3 + 64)
	w := c.writers.Get().(*gzip.Writer)
	defer c.writers.Put(w)
	w.Reset(&buf)
	if _, err := w.Write(p); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func (c *gzipCompressor) Decompress(p []byte) ([]byte, error) {
	var (
		r   *gzip.Reader
		err error
	)
	if pooled, ok := c.readers.Get().(*gzip.Reader); ok {
		r = pooled
		err = r.Reset(bytes.NewReader(p))
	} else {
		r, err = gzip.NewReader(bytes.NewReader(p))
	}
	if err != nil {
		return nil, err
	}
	defer c.readers.Put(r)
	var out bytes.Buffer
	out.Grow(len(p) * 4)
	n, err := out.ReadFrom(io.LimitReader(r, MaxDecompressedBytes+1))
	if err != nil {
		return nil, err
	}
	if n > MaxDecompressedBytes {
		return nil, fmt.Errorf("decompresses to more than %d bytes", MaxDecompressedBytes)
	}
	return out.Bytes(), nil
}

// Zstd returns a Zstandard Compressor (github.com/klauspost/compress/zstd)
// at its default level: on JSON it compresses about as well as gzip at a
// fraction of gzip's CPU time (docs/benchmarks.md).
func Zstd() Compressor {
	return zstdCompressor{}
}

type zstdCompressor struct{}

// The zstd encoder and decoder are safe for concurrent use with
// EncodeAll/DecodeAll and keep their state between calls, so one of each
// serves every zstdCompressor.
var (
	zstdOnce sync.Once
	zstdEnc  *zstd.Encoder
	zstdDec  *zstd.Decoder
	zstdErr  error
)

func zstdCodec() (*zstd.Encoder, *zstd.Decoder, error) {
	zstdOnce.Do(func() {
		zstdEnc, zstdErr = zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
		if zstdErr != nil {
			return
		}
		zstdDec, zstdErr = zstd.NewReader(nil,
			zstd.WithDecoderConcurrency(0),
			zstd.WithDecoderMaxMemory(MaxDecompressedBytes))
	})
	return zstdEnc, zstdDec, zstdErr
}

func (zstdCompressor) Encoding() string { return "zstd" }

func (zstdCompressor) Compress(p []byte) ([]byte, error) {
	enc, _, err := zstdCodec()
	if err != nil {
		return nil, err
	}
	return enc.EncodeAll(p, make([]byte, 0, len(p)/3+64)), nil
}

func (zstdCompressor) Decompress(p []byte) ([]byte, error) {
	_, dec, err := zstdCodec()
	if err != nil {
		return nil, err
	}
	return dec.DecodeAll(p, nil)
}

// builtinCompressors are the compressors every reader knows.
var builtinCompressors = []Compressor{Gzip(gzip.DefaultCompression), Zstd()}

// Decompress replaces a compressed message's payload (one whose metadata
// has MetadataContentEncoding) with the original bytes and removes the
// metadata key. A plain message is left as it is. Gzip and Zstd are known;
// extra adds custom compressors, looked up by Encoding. It fails with
// ErrDecompress, naming the encoding and the message, for an unknown
// encoding or a corrupt payload, and then leaves msg unchanged.
func Decompress(msg *message.Message, extra ...Compressor) error {
	enc := msg.Metadata.Get(MetadataContentEncoding)
	if enc == "" {
		return nil
	}
	p, err := DecompressPayload(enc, msg.Payload, extra...)
	if err != nil {
		return fmt.Errorf("message %s: %w", msg.UUID, err)
	}
	msg.Payload = p
	delete(msg.Metadata, MetadataContentEncoding)
	return nil
}

// DecompressPayload returns payload decompressed with the compressor whose
// Encoding is encoding: Gzip, Zstd or one of extra. An empty encoding
// returns payload as it is. It fails with ErrDecompress for an unknown
// encoding or a corrupt payload.
func DecompressPayload(encoding string, payload []byte, extra ...Compressor) ([]byte, error) {
	if encoding == "" {
		return payload, nil
	}
	c := findCompressor(encoding, extra)
	if c == nil {
		return nil, fmt.Errorf("%w: unknown content encoding %q (known: %s)", ErrDecompress, encoding, knownEncodings(extra))
	}
	p, err := c.Decompress(payload)
	if err != nil {
		return nil, fmt.Errorf("%w: %s payload of %d bytes: %w", ErrDecompress, encoding, len(payload), err)
	}
	return p, nil
}

func findCompressor(enc string, extra []Compressor) Compressor {
	for _, c := range extra {
		if c != nil && c.Encoding() == enc {
			return c
		}
	}
	for _, c := range builtinCompressors {
		if c.Encoding() == enc {
			return c
		}
	}
	return nil
}

func knownEncodings(extra []Compressor) string {
	var b bytes.Buffer
	for _, c := range append(builtinCompressors[:len(builtinCompressors):len(builtinCompressors)], extra...) {
		if c == nil {
			continue
		}
		if b.Len() > 0 {
			b.WriteString(", ")
		}
		b.WriteString(c.Encoding())
	}
	return b.String()
}
