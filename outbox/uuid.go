package outbox

import (
	"crypto/rand"
	"encoding/hex"
	"sync/atomic"
	"time"
)

// uuidLen is the length of a UUID in its canonical text form.
const uuidLen = 36

// lastV7 is the time part of the last UUIDv7 made: milliseconds since the
// Unix epoch shifted left by 12, plus a 12-bit sequence.
var lastV7 atomic.Int64

// NewUUID returns a new time-ordered UUIDv7 string, the default message ID.
func NewUUID() string {
	var b [uuidLen]byte
	return string(appendUUIDv7(b[:0]))
}

// appendUUIDv7 appends a new UUIDv7 in its canonical text form to b. The
// layout is RFC 9562's: 48 bits of Unix milliseconds, the version, a 12-bit
// sequence (the sub-millisecond nanoseconds >> 8, raised past the last
// value when the clock has not moved on), the variant, and 62 random bits.
// Every value is greater than the ones made before it in the process.
func appendUUIDv7(b []byte) []byte {
	var u [16]byte
	_, _ = rand.Read(u[:]) // crypto/rand.Read never returns an error
	milli, seq := v7Time()
	u[0] = byte(milli >> 40)
	u[1] = byte(milli >> 32)
	u[2] = byte(milli >> 24)
	u[3] = byte(milli >> 16)
	u[4] = byte(milli >> 8)
	u[5] = byte(milli)
	u[6] = 0x70 | 0x0f&byte(seq>>8)
	u[7] = byte(seq)
	u[8] = 0x80 | 0x3f&u[8]
	b = hex.AppendEncode(b, u[0:4])
	b = append(b, '-')
	b = hex.AppendEncode(b, u[4:6])
	b = append(b, '-')
	b = hex.AppendEncode(b, u[6:8])
	b = append(b, '-')
	b = hex.AppendEncode(b, u[8:10])
	b = append(b, '-')
	return hex.AppendEncode(b, u[10:])
}

// v7Time returns the milliseconds and the sequence of the next UUIDv7;
// milli<<12 + seq is greater than for any earlier call.
func v7Time() (milli, seq int64) {
	nano := time.Now().UnixNano()
	milli = nano / int64(time.Millisecond)
	now := milli<<12 + (nano-milli*int64(time.Millisecond))>>8
	for {
		last := lastV7.Load()
		next := max(now, last+1)
		if lastV7.CompareAndSwap(last, next) {
			return next >> 12, next & 0xfff
		}
	}
}
