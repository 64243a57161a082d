package main

import (
	"bytes"
	"context"
	"testing"
)

func TestRun(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), &out); err != nil {
		t.Fatal(err)
	}
	if want := "4 messages: 3 processed, 1 duplicate; 3 invoices\n"; out.String() != want {
		t.Fatalf("printed %q, want %q", out.String(), want)
	}
}
