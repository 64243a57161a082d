package gormstore

import (
	"fmt"

	"github.com/txoutbox/txoutbox/internal/sqlschema"
)

// maxTableNameLen keeps derived index names ("<table>_pending_idx") within
// PostgreSQL's 63-byte identifier limit.
const maxTableNameLen = 48

// parseTableName validates a configured table name.
func parseTableName(s string) (sqlschema.Table, error) {
	t, err := sqlschema.ParseTable(s, maxTableNameLen)
	if err != nil {
		return sqlschema.Table{}, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return t, nil
}

// quoteIdent quotes an identifier that is already valid.
func quoteIdent(s string) string { return sqlschema.QuoteIdent(s) }
