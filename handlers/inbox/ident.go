package inbox

import (
	"fmt"
	"regexp"
	"strings"
)

// This file keeps a minimal copy of gormstore's table-name rules (that
// validator is unexported): a plain SQL identifier, optionally
// schema-qualified, always quoted.

// maxTableNameLen keeps the derived index name ("<table>_received_at_idx")
// within PostgreSQL's 63-byte identifier limit.
const maxTableNameLen = 63 - len("_received_at_idx")

// maxSchemaNameLen is PostgreSQL's identifier limit.
const maxSchemaNameLen = 63

var identRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// tableName is a validated, optionally schema-qualified table name.
type tableName struct {
	schema, name string
}

func parseTableName(s string) (tableName, error) {
	parts := strings.Split(s, ".")
	if len(parts) > 2 {
		return tableName{}, fmt.Errorf("%w: table %q: use name or schema.name", ErrInvalidConfig, s)
	}
	for _, p := range parts {
		if !identRe.MatchString(p) {
			return tableName{}, fmt.Errorf("%w: table %q: %q is not a plain SQL identifier (letters, digits and _, not starting with a digit)", ErrInvalidConfig, s, p)
		}
	}
	t := tableName{name: parts[len(parts)-1]}
	if len(parts) == 2 {
		t.schema = parts[0]
	}
	if len(t.name) > maxTableNameLen {
		return tableName{}, fmt.Errorf("%w: table %q: name longer than %d characters", ErrInvalidConfig, s, maxTableNameLen)
	}
	if len(t.schema) > maxSchemaNameLen {
		return tableName{}, fmt.Errorf("%w: table %q: schema longer than %d characters", ErrInvalidConfig, s, maxSchemaNameLen)
	}
	return t, nil
}

// quoted returns the table name quoted for SQL: "schema"."name".
func (t tableName) quoted() string {
	if t.schema == "" {
		return quoteIdent(t.name)
	}
	return quoteIdent(t.schema) + "." + quoteIdent(t.name)
}

func (t tableName) String() string {
	if t.schema == "" {
		return t.name
	}
	return t.schema + "." + t.name
}

// quoteIdent quotes an identifier already validated by identRe.
func quoteIdent(s string) string { return `"` + s + `"` }
