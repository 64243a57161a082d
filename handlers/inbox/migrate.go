package inbox

import (
	"context"
	"embed"
	"fmt"
	"path"

	"github.com/txoutbox/txoutbox/internal/sqlschema"
	"gorm.io/gorm"
)

// Migrations holds the DDL of the inbox table and its failed table as plain
// SQL files in golang-migrate layout: postgres/NNNNNN_name.up.sql and
// .down.sql, and the same for mysql/ (MySQL and MariaDB) and sqlite/. They
// use the default table names "txoutbox_inbox" and "txoutbox_inbox_failed".
//
//go:embed migrations
var Migrations embed.FS

// Migrate creates or upgrades the default inbox table (DefaultTable) on db.
// It is a shortcut for New(db, Config{}) followed by Inbox.Migrate.
func Migrate(ctx context.Context, db *gorm.DB) error {
	in, err := New(db, Config{})
	if err != nil {
		return err
	}
	return in.Migrate(ctx)
}

// Migrate creates or upgrades the inbox table. It is idempotent and safe to
// run from several processes at once: every statement is written to be
// re-run, and the run holds a lock on PostgreSQL (an advisory lock) and
// MySQL (a user lock, GET_LOCK).
func (in *Inbox) Migrate(ctx context.Context) error {
	m := sqlschema.Migration{
		FS:           Migrations,
		Dir:          path.Join("migrations", in.drv.dialect().String()),
		DefaultTable: DefaultTable,
		Table:        in.table,
		Related:      []string{failedSuffix},
		Dialect:      in.drv.dialect(),
		Lock:         in.drv.migrationLock(),
	}
	if err := m.Run(ctx, in.db); err != nil {
		return fmt.Errorf("inbox: migrate %s: %w", in.table, err)
	}
	return nil
}
