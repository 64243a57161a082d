package gormstore

import (
	"flag"
	"fmt"
	"maps"
	"path/filepath"
	"testing"

	"github.com/txoutbox/txoutbox/internal/sqltmpl/sqltmpltest"
	"github.com/txoutbox/txoutbox/internal/testdb"
)

var updateSQL = flag.Bool("update-sql", false, "rewrite gormstore/testdata/sql from the statements the store builds")

// TestStatements keeps the final text of every statement of a store in
// gormstore/testdata/sql/<database>: NAME.sql when KeepDelivered does not
// change it, NAME.keep_delivered_<bool>.sql when it does. The files show
// what runs, and a change to a statement shows in review as a change to
// its file (go test ./gormstore -run TestStatements -update-sql rewrites
// them). Pick statements are shown for a batch of 2,000.
func TestStatements(t *testing.T) {
	for _, d := range testdb.Dialects {
		db := testdb.Open(t, d)
		byKeep := map[bool]map[string]string{}
		for _, keep := range []bool{false, true} {
			s, err := New(db, Config{KeepDelivered: keep})
			if err != nil {
				t.Fatal(err)
			}
			stmts := maps.Clone(s.sql)
			if pg, ok := s.drv.(*postgresDriver); ok {
				for _, topics := range []bool{false, true} {
					for _, free := range []bool{false, true} {
						stmts[pickName(topics, free)] = pg.pickSQL(2000, topics, free)
					}
				}
			}
			byKeep[keep] = stmts
		}
		if d == testdb.MySQL {
			sqltmpltest.CheckBinlogSafe(t, byKeep[false])
			sqltmpltest.CheckBinlogSafe(t, byKeep[true])
		}
		files := map[string]string{}
		for name, q := range byKeep[false] {
			if byKeep[true][name] == q {
				files[name+".sql"] = "-- " + name + ": " + string(d) + ", default table\n" + q + "\n"
				continue
			}
			for _, keep := range []bool{false, true} {
				files[fmt.Sprintf("%s.keep_delivered_%v.sql", name, keep)] = fmt.Sprintf("-- %s: %s, KeepDelivered %v, default table\n%s\n", name, d, keep, byKeep[keep][name])
			}
		}
		sqltmpltest.Check(t, filepath.Join("testdata", "sql", string(d)), files, *updateSQL,
			"go test ./gormstore -run TestStatements -update-sql")
	}
}
