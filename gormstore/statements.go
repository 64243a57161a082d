package gormstore

import (
	"cmp"
	"embed"
	"errors"
	"fmt"
	"text/template"

	"github.com/txoutbox/txoutbox/internal/sqlschema"
	"github.com/txoutbox/txoutbox/internal/sqltmpl"
)

// sqlFiles holds every database's statements as templates: shared.sql,
// parsed with each database's own file (postgres.sql, sqlite.sql), which
// defines what differs.
//
//go:embed sql/*.sql
var sqlFiles embed.FS

// parseSQL parses the statements of one database: sql/shared.sql and
// sql/<dialect>.sql.
func parseSQL(d sqlschema.Dialect) *template.Template {
	return template.Must(template.ParseFS(sqlFiles, "sql/shared.sql", "sql/"+d.String()+".sql"))
}

// sqlVars are the data of the statement templates.
type sqlVars struct {
	T         string // the quoted table
	Cols      string // rowColumns
	Setting   string // claimSetting
	Keep      bool   // Config.KeepDelivered
	Topics    bool   // a statement on some topics
	TopicsArg string // the parameter of the topics' array
	Free      bool   // leave out the keys other sessions hold
	Exclude   bool   // leave out the keys of parameter $2
	Window    string // the rows a window reads
	Where     string // the condition a variant of requeue or discard adds
}

// stmt is one statement a store runs: its name in Store.sql (and in
// testdata/sql), its template ("" when the same as the name), and what its
// variant sets in the data.
type stmt struct {
	name, tmpl string
	set        func(*sqlVars)
}

// sharedStatements are the statements every driver runs, besides its own.
var sharedStatements = []stmt{
	{name: "insert"}, {name: "delivered"}, {name: "fail"}, {name: "stats"},
	{name: "purge"}, {name: "count_delivered"},
	{name: "list_failed"}, {name: "get_failed"}, {name: "parked_ids"},
	{"requeue", "", func(v *sqlVars) { v.Where = "id IN ?" }},
	{"requeue_topic", "requeue", func(v *sqlVars) { v.Where = "topic = ?" }},
	{"requeue_all", "requeue", func(v *sqlVars) { v.Where = "1 = 1" }},
	{"discard", "", func(v *sqlVars) { v.Where = "id IN ?" }},
	{"discard_topic", "discard", func(v *sqlVars) { v.Where = "topic = ?" }},
	{"discard_all", "discard", func(v *sqlVars) { v.Where = "1 = 1" }},
}

// statements are a store's statements by name, rendered once per store.
type statements map[string]string

// renderStatements renders the shared statements and the driver's own
// (own) from t for the store's table and config.
func renderStatements(t *template.Template, s *Store, own []stmt) (statements, error) {
	st := statements{}
	var errs []error
	for _, sp := range append(append([]stmt(nil), sharedStatements...), own...) {
		v := sqlVars{T: s.quoted, Cols: rowColumns, Setting: claimSetting, Keep: s.cfg.KeepDelivered}
		if sp.set != nil {
			sp.set(&v)
		}
		var q string
		errs = append(errs, sqltmpl.Render(t, v, map[string]*string{cmp.Or(sp.tmpl, sp.name): &q}))
		st[sp.name] = q
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("gormstore: statements: %w", err)
	}
	return st, nil
}
