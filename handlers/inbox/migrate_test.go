package inbox_test

import (
	"context"
	"io/fs"
	"path"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/handlers/inbox"
	"github.com/txoutbox/txoutbox/internal/sqlschema"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/outbox"
)

func TestMigrateIdempotent(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		db := testdb.Open(t, d)
		ctx := context.Background()
		require.NoError(t, inbox.Migrate(ctx, db))
		require.NoError(t, inbox.Migrate(ctx, db))
		require.True(t, db.Migrator().HasTable(inbox.DefaultTable))
		require.True(t, db.Migrator().HasIndex(inbox.DefaultTable, inbox.DefaultTable+"_received_at_idx"))
	})
}

func TestMigrateConcurrent(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		db := testdb.Open(t, d)
		var wg sync.WaitGroup
		errs := make(chan error, 4)
		for range 4 {
			wg.Go(func() { errs <- inbox.Migrate(context.Background(), db) })
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
	})
}

// A custom table works quoted everywhere (a reserved word would fail
// unquoted), and its index gets a name of its own.
func TestCustomTable(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, d testdb.Dialect) {
		db := testdb.Open(t, d)
		ctx := context.Background()
		in, err := inbox.New(db, inbox.Config{Table: "select"})
		require.NoError(t, err)
		require.Equal(t, "select", in.Table())
		require.NoError(t, in.Migrate(ctx))
		require.True(t, db.Migrator().HasIndex("select", "select_received_at_idx"))
		require.Equal(t, "select_failed", in.FailedTable())
		require.True(t, db.Migrator().HasIndex("select_failed", "select_failed_key_idx"))
		require.False(t, db.Migrator().HasTable(inbox.DefaultTable))
		require.False(t, db.Migrator().HasTable(inbox.DefaultTable+"_failed"))

		id := outbox.NewUUID()
		for range 2 {
			_, err := in.Process(ctx, "c", id, func(context.Context) error { return nil })
			require.NoError(t, err)
		}
		require.EqualValues(t, 1, testdb.Count(t, db, quoteIdent(d, "select"), ""))
		n, err := in.Cleanup(ctx, 1, 0)
		require.NoError(t, err)
		require.EqualValues(t, 1, n)
	})
}

func TestSchemaQualifiedTablePostgres(t *testing.T) {
	t.Parallel()
	db, schema := testdb.OpenPostgres(t)
	ctx := context.Background()
	other := schema + "_inbox"
	t.Cleanup(func() { db.Exec(`DROP SCHEMA IF EXISTS "` + other + `" CASCADE`) })
	in, err := inbox.New(db, inbox.Config{Table: other + ".messages"})
	require.NoError(t, err)
	require.NoError(t, in.Migrate(ctx))
	require.NoError(t, in.Migrate(ctx))
	dup, err := in.Process(ctx, "c", "m-1", func(context.Context) error { return nil })
	require.NoError(t, err)
	require.False(t, dup)
	require.EqualValues(t, 1, testdb.Count(t, db, `"`+other+`"."messages"`, ""))
	require.EqualValues(t, 0, testdb.Count(t, db, `"`+other+`"."messages_failed"`, ""), "the failed table is in the inbox's schema")

	sqlite := testdb.OpenSQLite(t)
	_, err = inbox.New(sqlite, inbox.Config{Table: "app.messages"})
	require.ErrorIs(t, err, inbox.ErrInvalidConfig, "SQLite has no schemas")
}

func TestInvalidConfig(t *testing.T) {
	t.Parallel()
	db := testdb.OpenSQLite(t)
	for _, table := range []string{
		"in box", `in"box`, "inbox;drop", "1inbox", "a.b.c", ".inbox", "inbox.",
		strings.Repeat("x", 48),
	} {
		_, err := inbox.New(db, inbox.Config{Table: table})
		require.ErrorIs(t, err, inbox.ErrInvalidConfig, table)
		require.ErrorIs(t, inbox.Config{Table: table}.Validate(), inbox.ErrInvalidConfig, table)
	}
	require.NoError(t, inbox.Config{Table: strings.Repeat("x", 47)}.Validate())
	require.NoError(t, inbox.Config{}.Validate())
	_, err := inbox.New(nil, inbox.Config{})
	require.ErrorIs(t, err, inbox.ErrInvalidConfig)
}

// The embedded SQL files are complete: an up and a down file per version
// and dialect, all on the default table.
func TestMigrationFiles(t *testing.T) {
	t.Parallel()
	for _, d := range testdb.Dialects {
		entries, err := fs.ReadDir(inbox.Migrations, path.Join("migrations", string(d)))
		require.NoError(t, err)
		ups, downs := map[string]bool{}, map[string]bool{}
		for _, e := range entries {
			b, err := fs.ReadFile(inbox.Migrations, path.Join("migrations", string(d), e.Name()))
			require.NoError(t, err)
			// Quoted as the dialect quotes: Migrate replaces the names so.
			if !strings.Contains(string(b), quoteIdent(d, inbox.DefaultTable)) {
				require.Contains(t, string(b), quoteIdent(d, inbox.DefaultTable+"_failed"))
			}
			if d == testdb.MySQL {
				for _, st := range sqlschema.Split(string(b)) {
					require.NotContains(t, st, `"`, "%s: MySQL reads a double-quoted name as a string", e.Name())
				}
			}
			switch {
			case strings.HasSuffix(e.Name(), ".up.sql"):
				ups[strings.TrimSuffix(e.Name(), ".up.sql")] = true
			case strings.HasSuffix(e.Name(), ".down.sql"):
				downs[strings.TrimSuffix(e.Name(), ".down.sql")] = true
			default:
				t.Fatalf("unexpected file %s/%s", d, e.Name())
			}
		}
		require.NotEmpty(t, ups, d)
		require.Equal(t, ups, downs, d)
	}
}
