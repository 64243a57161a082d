package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/outbox"
)

// TestMySQLStoreRetryable checks the MySQL store's answer to the
// middleware: an InnoDB deadlock (1213) or lock wait timeout (1205), also
// wrapped, allows running the command again; nothing else does.
func TestMySQLStoreRetryable(t *testing.T) {
	t.Parallel()
	store, err := gormstore.New(testdb.Open(t, testdb.MySQL), gormstore.Config{})
	require.NoError(t, err)
	my := func(n uint16) error { return &mysql.MySQLError{Number: n, Message: "test"} }
	cases := []struct {
		name string
		err  error
		want bool
	}{
		{"deadlock", my(1213), true},
		{"lock wait timeout", my(1205), true},
		{"wrapped deadlock", fmt.Errorf("a: %w", fmt.Errorf("b: %w", my(1213))), true},
		{"joined lock wait timeout", errors.Join(errors.New("x"), my(1205)), true},
		{"nil", nil, false},
		{"plain", errors.New("Error 1213: Deadlock found"), false},
		{"duplicate entry", my(1062), false},
		{"read only transaction", my(1792), false},
		{"no such table", my(1146), false},
		{"lost connection", my(2013), false},
		{"PostgreSQL serialization failure", &pgconn.PgError{Code: "40001"}, false},
		{"bad connection", mysql.ErrInvalidConn, false},
		{"context canceled", context.Canceled, false},
		{"sentinel", outbox.ErrMarshal, false},
	}
	for _, tc := range cases {
		require.Equal(t, tc.want, store.Retryable(tc.err), tc.name)
	}
}

// TestStoreRetryableIsTheDefault: without a Retryable of its own, the
// middleware reruns a command after an error its MySQL store calls
// retryable, and returns any other error at once.
func TestStoreRetryableIsTheDefault(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testdb.MySQL)
	for _, n := range []uint16{1213, 1205} {
		id := fmt.Sprint("o-", n)
		runs := 0
		require.NoError(t, f.run(context.Background(), func(ctx context.Context) error {
			runs++
			if err := insertOrder(ctx, id, runs); err != nil {
				return err
			}
			if runs == 1 {
				return &mysql.MySQLError{Number: n, Message: "test"}
			}
			return nil
		}))
		require.Equal(t, 2, runs, "error %d", n)
		var amount int
		require.NoError(t, f.db.Raw("SELECT amount FROM orders WHERE id = ?", id).Scan(&amount).Error)
		require.Equal(t, 2, amount, "only the second attempt's write committed")
	}

	dup := &mysql.MySQLError{Number: 1062, Message: "Duplicate entry"}
	runs := 0
	err := f.run(context.Background(), func(ctx context.Context) error {
		runs++
		if err := insertOrder(ctx, "o-1062", runs); err != nil {
			return err
		}
		return dup
	})
	require.ErrorIs(t, err, dup)
	require.Equal(t, 1, runs)
	require.Zero(t, f.orderCount(t, "id = 'o-1062'"))
}
