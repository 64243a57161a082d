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
	want := `o-1 {"OrderID":"o-1","Customer":"ada"}
o-2 {"OrderID":"o-2","Customer":"grace"}
o-3 {"OrderID":"o-3","Customer":"edsger"}
`
	if out.String() != want {
		t.Fatalf("printed\n%s\nwant\n%s", out.String(), want)
	}
}
