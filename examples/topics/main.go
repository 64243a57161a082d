// Command topics shows the ordering rule of topics: events are ordered per
// partition key within a topic, and the default topic is one per event
// type, so an order's OrderPlaced and OrderPaid travel on two topics with
// no order between them. EncoderConfig.Topic puts every event of an order
// on one topic, where they keep their order:
//
//	go run ./examples/topics
package main

import (
	"fmt"
	"io"
	"log"
	"os"
	"strings"

	"github.com/txoutbox/txoutbox/outbox"
)

// OrderPlaced and OrderPaid are two events of one order.
type OrderPlaced struct{ OrderID string }

// OrderPaid follows OrderPlaced.
type OrderPaid struct{ OrderID string }

// PartitionKey orders the events of one order.
func (e OrderPlaced) PartitionKey() string { return e.OrderID }

// PartitionKey orders the events of one order.
func (e OrderPaid) PartitionKey() string { return e.OrderID }

func main() {
	if err := run(os.Stdout); err != nil {
		log.Fatal(err)
	}
}

func run(out io.Writer) error {
	events := []outbox.Entry{{Event: OrderPlaced{OrderID: "o-1"}}, {Event: OrderPaid{OrderID: "o-1"}}}

	// Default: the topic is the event name. Two topics, no order between them.
	byType := outbox.NewEncoder(outbox.EncoderConfig{})
	// One topic for every order event: OrderPaid is published after
	// OrderPlaced, consumed after it. Pass this encoder to the middleware
	// (middleware.TransactionalConfig.Encoder).
	shared := outbox.NewEncoder(outbox.EncoderConfig{
		Topic: func(eventName string, event any) string { return "orders" },
	})
	for _, enc := range []*outbox.Encoder{byType, shared} {
		recs, err := enc.EncodeAll(events)
		if err != nil {
			return err
		}
		var topics []string
		for _, r := range recs {
			topics = append(topics, r.Message.Metadata.Get(outbox.MetadataName)+" on "+r.Topic)
		}
		fmt.Fprintln(out, strings.Join(topics, ", "))
	}
	return nil
}
