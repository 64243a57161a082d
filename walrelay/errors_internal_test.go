package walrelay

import (
	"errors"
	"testing"
)

func TestWALLevelError(t *testing.T) {
	err := walLevelError("replica")
	want := "walrelay: wal_level is replica; the WAL mode needs wal_level=logical: ALTER SYSTEM SET wal_level = logical and restart PostgreSQL"
	if err.Error() != want {
		t.Fatalf("got %q, want %q", err, want)
	}
	if !errors.Is(err, ErrWALLevel) {
		t.Fatal("not ErrWALLevel")
	}
}
