package gormstore_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/txoutbox/txoutbox/gormstore"
	"github.com/txoutbox/txoutbox/internal/sqlschema"
	"github.com/txoutbox/txoutbox/internal/testdb"
	"github.com/txoutbox/txoutbox/outbox/outboxtest"
	"gorm.io/gorm"
)

// storeDialects are the databases the native table runs on.
var storeDialects = testdb.Dialects

// TestConformance runs the outbox.Store conformance suite on the native
// table: PostgreSQL, SQLite and MySQL with the default table, plus each
// with a custom table whose name is a reserved word (it only works
// quoted), and PostgreSQL with a schema-qualified table in a schema
// Migrate creates.
func TestConformance(t *testing.T) {
	t.Parallel()

	for _, d := range storeDialects {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			outboxtest.Exercise(t, func(t *testing.T) outboxtest.Harness {
				return newHarness(t, testdb.Open(t, d), gormstore.Config{})
			})
		})
	}

	t.Run("sqlite_custom_table", func(t *testing.T) {
		t.Parallel()
		outboxtest.Exercise(t, func(t *testing.T) outboxtest.Harness {
			return newHarness(t, testdb.Open(t, testdb.SQLite), gormstore.Config{Table: "order"})
		})
	})

	t.Run("postgres_custom_table", func(t *testing.T) {
		t.Parallel()
		outboxtest.Exercise(t, func(t *testing.T) outboxtest.Harness {
			return newHarness(t, testdb.Open(t, testdb.Postgres), gormstore.Config{Table: "order"})
		})
	})

	t.Run("mysql_custom_table", func(t *testing.T) {
		t.Parallel()
		outboxtest.Exercise(t, func(t *testing.T) outboxtest.Harness {
			return newHarness(t, testdb.Open(t, testdb.MySQL), gormstore.Config{Table: "order"})
		})
	})

	t.Run("postgres_schema_qualified", func(t *testing.T) {
		t.Parallel()
		outboxtest.Exercise(t, func(t *testing.T) outboxtest.Harness {
			db := testdb.Open(t, testdb.Postgres)
			schema := uniqueSchema(t, db)
			return newHarness(t, db, gormstore.Config{Table: schema + ".events"})
		})
	})
}

// newHarness migrates a store with cfg on db and returns it with a reader of
// its table.
func newHarness(t *testing.T, db *gorm.DB, cfg gormstore.Config) outboxtest.Harness {
	t.Helper()
	store, err := gormstore.New(db, cfg)
	require.NoError(t, err)
	require.NoError(t, store.Migrate(context.Background()))
	return outboxtest.Harness{Store: store, DB: db, Rows: nativeRows(quoteTable(db, store.Table()))}
}

// nativeRows reads every row of the native outbox table (quoted name) in id
// order. It requires the stored metadata to be a JSON object, never JSON
// null, so that a relay can always add metadata to a decoded message.
func nativeRows(table string) func(t testing.TB, db *gorm.DB) []outboxtest.Row {
	return func(t testing.TB, db *gorm.DB) []outboxtest.Row {
		t.Helper()
		rows, err := db.Raw(`SELECT id, uuid, topic, partition_key, payload, metadata, attempts,
			delivered_at IS NOT NULL, failed_at IS NOT NULL FROM ` + table + ` ORDER BY id`).Rows()
		require.NoError(t, err)
		defer rows.Close()
		var out []outboxtest.Row
		for rows.Next() {
			var r outboxtest.Row
			var md []byte
			require.NoError(t, rows.Scan(&r.ID, &r.UUID, &r.Topic, &r.PartitionKey, &r.Payload, &md,
				&r.Attempts, &r.Delivered, &r.Failed))
			require.True(t, strings.HasPrefix(strings.TrimSpace(string(md)), "{"),
				"metadata of row %d must be a JSON object, got %q", r.ID, md)
			require.NoError(t, json.Unmarshal(md, &r.Metadata), "metadata of row %d", r.ID)
			out = append(out, r)
		}
		require.NoError(t, rows.Err())
		return out
	}
}

// quoteTable quotes a validated, optionally schema-qualified table name
// for db's database.
func quoteTable(db *gorm.DB, name string) string {
	d, _ := sqlschema.DialectOf(db)
	t, err := sqlschema.ParseTable(name, sqlschema.MaxIdentLen)
	if err != nil {
		panic(err)
	}
	return d.Quote(t)
}

// uniqueSchema returns the name of a PostgreSQL schema no other test uses,
// not yet created, and drops it (if it was created) when t ends.
func uniqueSchema(t *testing.T, db *gorm.DB) string {
	t.Helper()
	var suffix string
	require.NoError(t, db.Raw(`SELECT substr(md5(random()::text), 1, 12)`).Scan(&suffix).Error)
	schema := fmt.Sprintf("app_%s", suffix)
	t.Cleanup(func() {
		if err := db.Exec(`DROP SCHEMA IF EXISTS "` + schema + `" CASCADE`).Error; err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
	})
	return schema
}

// TestRelayConformance runs the relay contract suite on the native table:
// PostgreSQL, SQLite and MySQL, deleting delivered rows and keeping them.
func TestRelayConformance(t *testing.T) {
	t.Parallel()
	for _, d := range storeDialects {
		for _, keep := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/keep_delivered=%v", d, keep), func(t *testing.T) {
				t.Parallel()
				outboxtest.ExerciseRelay(t, func(t *testing.T) outboxtest.RelayHarness {
					h := newHarness(t, testdb.Open(t, d), gormstore.Config{KeepDelivered: keep})
					store := h.Store.(*gormstore.Store)
					return outboxtest.RelayHarness{
						Harness:      h,
						Requeue:      store.Requeue,
						Discard:      store.Discard,
						SerialClaims: d == testdb.SQLite,
					}
				})
			})
		}
	}
}
