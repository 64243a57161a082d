package main

import (
	"bytes"
	"cmp"
	"context"
	"os"
	"strings"
	"testing"

	"github.com/txoutbox/txoutbox/internal/testdb"
)

// TestRun runs the example against the PostgreSQL and RabbitMQ of the
// tests, in a schema of its own.
func TestRun(t *testing.T) {
	_, schema := testdb.OpenPostgres(t)
	var out bytes.Buffer
	amqpURL := cmp.Or(os.Getenv("TEST_AMQP_URL"), "amqp://guest:guest@127.0.0.1:5672/")
	if err := run(context.Background(), &out, testdb.SchemaURL(t, schema), amqpURL); err != nil {
		t.Fatalf("%v (RabbitMQ at %s is required: make test starts it)", err, amqpURL)
	}
	if !strings.HasPrefix(out.String(), "100 orders placed, relayed through RabbitMQ and invoiced once each in ") {
		t.Fatalf("printed %q", out.String())
	}
}
