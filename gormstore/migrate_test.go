package gormstore_test

import (
	"context"
	"fmt"
	"io/fs"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/sqlschema"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"gorm.io/gorm"
)

func TestMigrateIdempotent(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		ctx := context.Background()
		require.NoError(t, gormstore.Migrate(ctx, db))
		require.NoError(t, db.Transaction(func(tx *gorm.DB) error {
			s, err := gormstore.New(db, gormstore.Config{})
			if err != nil {
				return err
			}
			return s.Save(ctx, tx, nil)
		}))
		require.NoError(t, db.Exec(`INSERT INTO txoutbox_outbox (uuid, topic, payload, created_at, next_attempt_at) VALUES ('u1', 't', ?, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)`, []byte{0}).Error)
		schemaBefore := describeTable(t, db, gormstore.DefaultTable)

		require.NoError(t, gormstore.Migrate(ctx, db))
		require.NoError(t, gormstore.Migrate(ctx, db))
		require.Equal(t, schemaBefore, describeTable(t, db, gormstore.DefaultTable))
		require.Equal(t, int64(1), testdb.Count(t, db, gormstore.DefaultTable, ""), "Migrate must keep the rows")
	})
}

func TestMigrateConcurrent(t *testing.T) {
	t.Parallel()
	for _, d := range []testdb.Dialect{testdb.Postgres, testdb.MySQL} {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			migrateConcurrently(t, testdb.Open(t, d))
		})
	}
}

// migrateConcurrently runs Migrate four times at once on db: the
// migration lock lets one in at a time.
func migrateConcurrently(t *testing.T, db *gorm.DB) {
	ctx := context.Background()
	const n = 4
	errs := make(chan error, n)
	start := make(chan struct{})
	for range n {
		go func() {
			<-start
			errs <- gormstore.Migrate(ctx, db)
		}()
	}
	close(start)
	for range n {
		require.NoError(t, <-errs)
	}
	require.Equal(t, wantIndexes(t, db, gormstore.DefaultTable), indexNames(t, db, "", gormstore.DefaultTable))
}

func TestMigrateCanceledContext(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		require.ErrorIs(t, gormstore.Migrate(ctx, db), context.Canceled)
	})
}

// TestMigrationFiles checks that the plain SQL files shipped for migration
// tools create the same table as Migrate, that the down files drop it, and
// that Migrate accepts a table the files created.
func TestMigrationFiles(t *testing.T) {
	t.Parallel()
	testdb.Each(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		d, _ := sqlschema.DialectOf(db)
		dir := d.String()
		// A migration tool runs each file as one multi-statement script:
		// the up files in order, the down files in reverse order. On
		// MySQL that needs multiStatements=true in the tool's DSN; here
		// the file's statements run one by one.
		ups, err := fs.Glob(gormstore.Migrations, "migrations/"+dir+"/*.up.sql")
		require.NoError(t, err)
		require.NotEmpty(t, ups)
		run := func(files []string) error {
			for _, f := range files {
				b, err := fs.ReadFile(gormstore.Migrations, f)
				require.NoError(t, err)
				stmts := []string{string(b)}
				if d == sqlschema.MySQL {
					stmts = sqlschema.Split(string(b))
				}
				for _, st := range stmts {
					if err := db.Exec(st).Error; err != nil {
						return fmt.Errorf("%s: %w", f, err)
					}
				}
			}
			return nil
		}
		var downs []string
		for i := len(ups) - 1; i >= 0; i-- {
			downs = append(downs, strings.TrimSuffix(ups[i], ".up.sql")+".down.sql")
		}
		up := func() error { return run(ups) }
		down := func() error { return run(downs) }

		require.NoError(t, up())
		fromFile := describeTable(t, db, gormstore.DefaultTable)

		reference := testdb.Open(t, testdb.Dialect(dir))
		require.NoError(t, gormstore.Migrate(context.Background(), reference))
		require.Equal(t, describeTable(t, reference, gormstore.DefaultTable), fromFile)

		// Migrate on a table the files created is a no-op.
		require.NoError(t, gormstore.Migrate(context.Background(), db))
		require.Equal(t, fromFile, describeTable(t, db, gormstore.DefaultTable))

		require.NoError(t, down())
		require.Empty(t, describeTable(t, db, gormstore.DefaultTable), "the down files must drop the table and its indexes")
		require.NoError(t, down(), "the down files are re-runnable")
		require.NoError(t, up(), "up after down")
		require.Equal(t, fromFile, describeTable(t, db, gormstore.DefaultTable))
	})
}

// TestMigrationFilesLayout checks the golang-migrate layout: every up file
// has a down file, for both dialects.
func TestMigrationFilesLayout(t *testing.T) {
	t.Parallel()
	for _, d := range testdb.Dialects {
		entries, err := fs.ReadDir(gormstore.Migrations, "migrations/"+string(d))
		require.NoError(t, err)
		var ups, downs []string
		name := regexp.MustCompile(`^\d{6}_[a-z0-9_]+\.(up|down)\.sql$`)
		for _, e := range entries {
			require.Regexp(t, name, e.Name())
			if base, ok := strings.CutSuffix(e.Name(), ".up.sql"); ok {
				ups = append(ups, base)
			} else if base, ok := strings.CutSuffix(e.Name(), ".down.sql"); ok {
				downs = append(downs, base)
			}
		}
		require.NotEmpty(t, ups, string(d))
		require.Equal(t, ups, downs, string(d))
	}
}

// describeTable returns a dialect-specific description of table in the
// connection's schema: its columns (name, type, nullability, default,
// identity) and its indexes' definitions. It is empty when the table does
// not exist.
func describeTable(t *testing.T, db *gorm.DB, table string) []string {
	t.Helper()
	var out []string
	if db.Dialector.Name() == "sqlite" {
		var cols []struct {
			Cid       int
			Name      string
			Type      string
			Notnull   int
			DfltValue *string
			Pk        int
		}
		require.NoError(t, db.Raw(`SELECT cid, name, type, "notnull", dflt_value, pk FROM pragma_table_info(?) ORDER BY cid`, table).Scan(&cols).Error)
		for _, c := range cols {
			out = append(out, fmt.Sprintf("column %d %s %s notnull=%d default=%v pk=%d", c.Cid, c.Name, c.Type, c.Notnull, deref(c.DfltValue), c.Pk))
		}
		var idx []struct{ Name, SQL string }
		require.NoError(t, db.Raw(`SELECT name, COALESCE(sql, '') AS sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? ORDER BY name`, table).Scan(&idx).Error)
		for _, i := range idx {
			out = append(out, "index "+i.Name+" "+strings.Join(strings.Fields(i.SQL), " "))
		}
		return out
	}
	if db.Dialector.Name() == "mysql" {
		var cols []struct {
			OrdinalPosition      int
			ColumnName           string
			ColumnType           string
			IsNullable           string
			ColumnDefault        *string
			Extra                string
			GenerationExpression *string
		}
		require.NoError(t, db.Raw(`SELECT ordinal_position, column_name, column_type, is_nullable, column_default, extra, generation_expression
			FROM information_schema.columns WHERE table_schema = database() AND table_name = ? ORDER BY ordinal_position`, table).Scan(&cols).Error)
		for _, c := range cols {
			out = append(out, fmt.Sprintf("column %d %s %s nullable=%s default=%v extra=%s generated=%v",
				c.OrdinalPosition, c.ColumnName, c.ColumnType, c.IsNullable, deref(c.ColumnDefault), c.Extra, deref(c.GenerationExpression)))
		}
		var idx []struct {
			IndexName  string
			NonUnique  int
			SeqInIndex int
			ColumnName string
		}
		require.NoError(t, db.Raw(`SELECT index_name, non_unique, seq_in_index, column_name FROM information_schema.statistics
			WHERE table_schema = database() AND table_name = ? ORDER BY index_name, seq_in_index`, table).Scan(&idx).Error)
		for _, i := range idx {
			out = append(out, fmt.Sprintf("index %s unique=%v %d %s", i.IndexName, i.NonUnique == 0, i.SeqInIndex, i.ColumnName))
		}
		return out
	}
	var cols []struct {
		OrdinalPosition    int
		ColumnName         string
		DataType           string
		IsNullable         string
		ColumnDefault      *string
		IsIdentity         string
		IdentityGeneration *string
	}
	require.NoError(t, db.Raw(`SELECT ordinal_position, column_name, data_type, is_nullable, column_default, is_identity, identity_generation
		FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = ? ORDER BY ordinal_position`, table).Scan(&cols).Error)
	for _, c := range cols {
		out = append(out, fmt.Sprintf("column %d %s %s nullable=%s default=%v identity=%s %v",
			c.OrdinalPosition, c.ColumnName, c.DataType, c.IsNullable, deref(c.ColumnDefault), c.IsIdentity, deref(c.IdentityGeneration)))
	}
	var idx []struct{ Indexname, Indexdef string }
	require.NoError(t, db.Raw(`SELECT indexname, replace(indexdef, current_schema() || '.', '') AS indexdef
		FROM pg_indexes WHERE schemaname = current_schema() AND tablename = ? ORDER BY indexname`, table).Scan(&idx).Error)
	for _, i := range idx {
		out = append(out, "index "+i.Indexname+" "+i.Indexdef)
	}
	return out
}

func deref(s *string) string {
	if s == nil {
		return "<nil>"
	}
	return *s
}

// TestPendingIndexUsed checks on PostgreSQL that a claim-shaped query reads
// the partial index on undelivered rows, not the whole table, when most rows
// are delivered.
func TestPendingIndexUsed(t *testing.T) {
	t.Parallel()
	db := testdb.Open(t, testdb.Postgres)
	require.NoError(t, gormstore.Migrate(context.Background(), db))
	require.NoError(t, db.Exec(`INSERT INTO txoutbox_outbox (uuid, topic, partition_key, payload, delivered_at)
		SELECT 'd-' || g, 'topic', 'key-' || (g % 100), convert_to('{"n":' || g || '}', 'UTF8'), now()
		FROM generate_series(1, 50000) AS g`).Error)
	require.NoError(t, db.Exec(`INSERT INTO txoutbox_outbox (uuid, topic, partition_key, payload, failed_at)
		SELECT 'f-' || g, 'topic', 'key', '\x00', now() FROM generate_series(1, 100) AS g`).Error)
	require.NoError(t, db.Exec(`INSERT INTO txoutbox_outbox (uuid, topic, partition_key, payload)
		SELECT 'p-' || g, 'topic', 'key-' || (g % 10), '\x00' FROM generate_series(1, 50) AS g`).Error)
	require.NoError(t, db.Exec(`ANALYZE txoutbox_outbox`).Error)

	const claim = `SELECT id, uuid, topic, partition_key, payload, metadata FROM txoutbox_outbox
		WHERE delivered_at IS NULL AND failed_at IS NULL ORDER BY id LIMIT 100`
	var plan []string
	require.NoError(t, db.Raw(`EXPLAIN `+claim).Scan(&plan).Error)
	require.Contains(t, strings.Join(plan, "\n"), "txoutbox_outbox_pending_idx", "plan:\n%s", strings.Join(plan, "\n"))

	var pending []string
	require.NoError(t, db.Raw(`SELECT uuid FROM (`+claim+`) AS c`).Scan(&pending).Error)
	require.Len(t, pending, 50)
	require.Equal(t, "p-1", pending[0])
}
