// Package leak checks that a package's tests leave no goroutine running:
// each package that starts goroutines calls VerifyTestMain from its
// TestMain.
package leak

import (
	"testing"

	"go.uber.org/goleak"
)

// thirdParty are goroutines that libraries leave running after everything
// of theirs was closed, by design; none of them is started by txoutbox.
var thirdParty = []goleak.Option{
	// GORM's prepared-statement cache (Session{PrepareStmt: true}) starts
	// a ticker goroutine per cache that nothing stops.
	goleak.IgnoreAnyFunction("gorm.io/gorm/internal/lru.NewLRU[...].func1"),
	// Sarama's metrics registry (Kafka) keeps a global meter ticker.
	goleak.IgnoreAnyFunction("github.com/rcrowley/go-metrics.(*meterArbiter).tick"),
	// watermill-nats drains its connection on Close; the drain finishes
	// asynchronously, up to its flush timeout.
	goleak.IgnoreAnyFunction("github.com/nats-io/nats%2ego.(*Conn).drainConnection"),
	// watermill-redisstream's reader sleeps out its retry pause after
	// Close before it sees the subscriber closed.
	goleak.IgnoreAnyFunction("github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream.(*Subscriber).read"),
}

// VerifyTestMain runs the tests of m and fails them when a goroutine they
// started is still running afterwards, other than the known library
// goroutines above.
func VerifyTestMain(m *testing.M, opts ...goleak.Option) {
	goleak.VerifyTestMain(m, append(thirdParty, opts...)...)
}
