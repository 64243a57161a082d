package gormstore

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/txoutbox/txoutbox/internal/testdb"
)

var updateSQL = flag.Bool("update-sql", false, "rewrite gormstore/testdata/sql from the statements the store builds")

// TestRelayStatements keeps the final text of every relay statement, per
// database and KeepDelivered, in gormstore/testdata/sql: the files show
// what runs, and a change to a statement shows in review as a change to
// its file (go test ./gormstore -run TestRelayStatements -update-sql
// rewrites them).
func TestRelayStatements(t *testing.T) {
	for _, d := range testdb.Dialects {
		for _, keep := range []bool{false, true} {
			s, err := New(testdb.Open(t, d), Config{KeepDelivered: keep})
			if err != nil {
				t.Fatal(err)
			}
			r := s.relay
			stmts := map[string]string{"delivered": r.delivered, "fail": r.fail}
			if d == testdb.Postgres {
				stmts["take"] = r.take
				for ti, topics := range []string{"all", "topics"} {
					for fi, free := range []string{"", "_free"} {
						stmts["pick_"+topics+free] = s.pickSQL(2000, ti == 1, fi == 1)
					}
				}
			} else {
				stmts["window"], stmts["window_topics"] = r.window, r.windowTopics
			}
			dir := filepath.Join("testdata", "sql", string(d), fmt.Sprintf("keep_delivered_%v", keep))
			for name, q := range stmts {
				path := filepath.Join(dir, name+".sql")
				text := "-- " + name + ": " + string(d) + ", KeepDelivered " + fmt.Sprint(keep) + ", default table, batch 2,000\n" + q + "\n"
				if *updateSQL {
					if err := os.MkdirAll(dir, 0o755); err != nil {
						t.Fatal(err)
					}
					if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
						t.Fatal(err)
					}
					continue
				}
				want, err := os.ReadFile(path)
				if err != nil {
					t.Fatalf("%v (run go test ./gormstore -run TestRelayStatements -update-sql)", err)
				}
				if string(want) != text {
					t.Errorf("%s differs from the statement the store builds (run go test ./gormstore -run TestRelayStatements -update-sql and review the diff)", path)
				}
			}
		}
	}
}
