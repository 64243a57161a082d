package inbox

import (
	"flag"
	"maps"
	"path/filepath"
	"strings"
	"testing"

	"github.com/txoutbox/txoutbox/internal/sqltmpl/sqltmpltest"
	"github.com/txoutbox/txoutbox/internal/testdb"
)

var updateSQL = flag.Bool("update-sql", false, "rewrite handlers/inbox/testdata/sql from the statements the inbox builds")

// TestStatements keeps the final text of every inbox statement in
// handlers/inbox/testdata/sql/<database>/NAME.sql, record_many as it
// records two messages, with the database's own statements. The files
// show what runs, and a change to a statement shows in review as a change
// to its file (go test ./handlers/inbox -run TestStatements -update-sql
// rewrites them).
func TestStatements(t *testing.T) {
	for _, d := range testdb.Dialects {
		in, err := New(testdb.Open(t, d), Config{})
		if err != nil {
			t.Fatal(err)
		}
		texts := map[string]string{}
		for name, q := range in.sql.byName() {
			texts[name] = *q
		}
		maps.Copy(texts, in.sql.own)
		texts["record_many"] = in.sql.recordMany(2)
		delete(texts, "record_row") // a part of record_many
		if d == testdb.MySQL {
			sqltmpltest.CheckBinlogSafe(t, texts)
		}
		files := map[string]string{}
		for name, text := range texts {
			if d == testdb.MySQL && strings.Contains(text, `"`) {
				t.Errorf("%s on MySQL has a double quote: MySQL reads a double-quoted name as a string", name)
			}
			files[name+".sql"] = "-- " + name + ": " + string(d) + ", default tables\n" + text + "\n"
		}
		sqltmpltest.Check(t, filepath.Join("testdata", "sql", string(d)), files, *updateSQL,
			"go test ./handlers/inbox -run TestStatements -update-sql")
	}
}
