package gormstore_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/outbox"
)

// TestRetryable checks the store's answer to the transactional middleware:
// which errors allow running a command again. It is the driver's answer:
// PostgreSQL's serialization failures and deadlocks; nothing on SQLite,
// which waits for its lock instead.
func TestRetryable(t *testing.T) {
	t.Parallel()
	pgStore, err := gormstore.New(testdb.Open(t, testdb.Postgres), gormstore.Config{})
	require.NoError(t, err)
	liteStore, err := gormstore.New(testdb.Open(t, testdb.SQLite), gormstore.Config{})
	require.NoError(t, err)
	pg := func(code string) error { return &pgconn.PgError{Code: code} }
	cases := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"plain", errors.New("40001"), false},
		{"serialization failure", pg("40001"), true},
		{"deadlock", pg("40P01"), true},
		{"wrapped serialization failure", fmt.Errorf("a: %w", fmt.Errorf("b: %w", pg("40001"))), true},
		{"joined deadlock", errors.Join(errors.New("x"), pg("40P01")), true},
		{"unique violation", pg("23505"), false},
		{"read only", pg("25006"), false},
		{"lock not available", pg("55P03"), false},
		{"context canceled", context.Canceled, false},
		{"sentinel", outbox.ErrMarshal, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tc.want, pgStore.Retryable(tc.err), "postgres")
			require.False(t, liteStore.Retryable(tc.err), "sqlite")
		})
	}
}
