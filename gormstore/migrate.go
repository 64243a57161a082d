package gormstore

import (
	"context"
	"embed"
	"fmt"
	"path"

	"github.com/txoutbox/txoutbox/internal/sqlschema"
	"gorm.io/gorm"
)

// Migrations holds the DDL of the outbox table as plain SQL files in
// golang-migrate layout: postgres/NNNNNN_name.up.sql and .down.sql, and the
// same for sqlite/. They use the default table name "txoutbox_outbox".
//
//go:embed migrations
var Migrations embed.FS

// migrateLockKey is the PostgreSQL advisory lock that serialises concurrent
// Migrate calls (several instances starting at once).
const migrateLockKey = 0x74786f7574626f78 // "txoutbox"

// Migrate creates or upgrades the default outbox table (DefaultTable) on db.
// It is a shortcut for New(db, Config{}) followed by Store.Migrate.
func Migrate(ctx context.Context, db *gorm.DB) error {
	s, err := New(db, Config{})
	if err != nil {
		return err
	}
	return s.Migrate(ctx)
}

// Migrate creates or upgrades the store's table. It is idempotent and safe
// to run from several processes at once: every statement is written to be
// re-run, and on PostgreSQL the run holds an advisory lock.
func (s *Store) Migrate(ctx context.Context) error {
	if err := s.migration().Run(ctx, s.db); err != nil {
		return fmt.Errorf("gormstore: migrate %s: %w", s.table, err)
	}
	return nil
}

func (s *Store) migration() sqlschema.Migration {
	return sqlschema.Migration{
		FS:           Migrations,
		Dir:          path.Join("migrations", s.drv.dialect().String()),
		DefaultTable: DefaultTable,
		Table:        s.table,
		Dialect:      s.drv.dialect(),
		Lock:         s.drv.migrationLock(),
	}
}
