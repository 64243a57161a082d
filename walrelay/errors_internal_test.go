package walrelay

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
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

func TestSlotLostError(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"START_REPLICATION on an invalidated slot", &pgconn.PgError{Code: "55000", Message: `can no longer get changes from replication slot "txoutbox"`, Detail: "This slot has been invalidated because it exceeded the maximum reserved size."},
			`can no longer get changes from replication slot "txoutbox". This slot has been invalidated because it exceeded the maximum reserved size.`},
		{"WAL removed", &pgconn.PgError{Code: "58P01", Message: "requested WAL segment 000000010000000000000003 has already been removed"},
			"requested WAL segment 000000010000000000000003 has already been removed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := lostSlotError("txoutbox", fmt.Errorf("START_REPLICATION: %w", tc.err))
			if err == nil {
				t.Fatal("not taken for a lost slot")
			}
			if !errors.Is(err, ErrSlotInvalidated) || !errors.Is(err, ErrBadSlot) {
				t.Fatalf("%v: not ErrSlotInvalidated and ErrBadSlot", err)
			}
			for _, part := range []string{
				"replication slot txoutbox lost WAL it still needed", tc.want,
				"the events written since its confirmed position are gone from the stream",
				"SELECT pg_drop_replication_slot('txoutbox')", "walrelay.Setup",
				"must be recovered from the application", "max_slot_wal_keep_size",
			} {
				if !strings.Contains(err.Error(), part) {
					t.Errorf("%q lacks %q", err, part)
				}
			}
		})
	}
	for _, other := range []error{
		errors.New("connection reset"),
		&pgconn.PgError{Code: "55006", Message: `replication slot "txoutbox" is active for PID 42`},
		&pgconn.PgError{Code: "55000", Message: "something else"},
	} {
		if err := lostSlotError("txoutbox", other); err != nil {
			t.Errorf("%v taken for a lost slot: %v", other, err)
		}
	}
	err := slotLostError("s", "wal_status lost")
	if want := "walrelay: replication slot cannot be used: invalidated: replication slot s lost WAL it still needed (wal_status lost): "; !strings.HasPrefix(err.Error(), want) {
		t.Errorf("%q does not start with %q", err, want)
	}
}
