//go:build chaos && !race

package chaos_test

import (
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
)

// TestBrokerOutageWatermillAMQP runs the broker outage scenario
// (runBrokerOutage) with the publisher a user of this library would take:
// watermill-amqp/v3's, on amqp.NewDurableQueueConfig, with publisher
// confirms on (without them a message written to the socket just before the
// broker stops counts as published and can be lost, which breaks
// at-least-once).
//
// It is built only without the race detector: watermill-amqp v3.0.2 has a
// data race in its own reconnect code (ConnectionWrapper.connected is
// replaced by handleConnectionClose while Publish reads it in IsConnected,
// connection.go:114 and :139; upstream issue ThreeDotsLabs/watermill#693),
// which -race reports at every broker outage. `make test-chaos` runs it in
// a second, race-free go test run.
//
// What it shows of watermill-amqp: while the broker is down, Publish fails
// at once with "not connected to AMQP" (it does not block), and its
// connection comes back by itself with its own backoff (0.5s, x1.5, up to
// 60s), so delivery resumes a few seconds after the broker does.
func TestBrokerOutageWatermillAMQP(t *testing.T) {
	runBrokerOutage(t, func(t *testing.T) message.Publisher {
		cfg := amqp.NewDurableQueueConfig(amqpURL())
		cfg.Publish.ConfirmDelivery = true
		pub, err := amqp.NewPublisher(cfg, watermill.NopLogger{})
		require.NoError(t, err)
		return pub
	})
}
