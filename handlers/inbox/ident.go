package inbox

import (
	"fmt"

	"github.com/txoutbox/txoutbox/internal/sqlschema"
)

// maxTableNameLen keeps the derived index name ("<table>_received_at_idx")
// within PostgreSQL's 63-byte identifier limit.
const maxTableNameLen = sqlschema.MaxIdentLen - len("_received_at_idx")

// parseTableName validates a configured table name.
func parseTableName(s string) (sqlschema.Table, error) {
	t, err := sqlschema.ParseTable(s, maxTableNameLen)
	if err != nil {
		return sqlschema.Table{}, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return t, nil
}
