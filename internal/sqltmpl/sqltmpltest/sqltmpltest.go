// Package sqltmpltest keeps the final text of rendered SQL statements in
// golden files, so that a change to a statement shows in review as a change
// to its file.
package sqltmpltest

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Check compares files (file name to content) with the files of dir: each
// must match, and dir must hold no other file. With update it rewrites
// dir to hold exactly files instead. rerun is the command that updates
// them, for the failure messages.
func Check(tb testing.TB, dir string, files map[string]string, update bool, rerun string) {
	tb.Helper()
	if update {
		if err := os.RemoveAll(dir); err != nil {
			tb.Fatal(err)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			tb.Fatal(err)
		}
		for name, text := range files {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
				tb.Fatal(err)
			}
		}
		return
	}
	for name, text := range files {
		path := filepath.Join(dir, name)
		want, err := os.ReadFile(path)
		if err != nil {
			tb.Fatalf("%v (run %s)", err, rerun)
		}
		if string(want) != text {
			tb.Errorf("%s differs from the statement the code builds (run %s and review the diff)", path, rerun)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		tb.Fatal(err)
	}
	for _, e := range entries {
		if _, ok := files[e.Name()]; !ok {
			tb.Errorf("%s is no statement the code builds (run %s)", filepath.Join(dir, e.Name()), rerun)
		}
	}
}

// unsafeForStatementBinlog matches what makes a statement that changes
// rows unsafe for statement-based binary logging on MySQL and MariaDB: a
// replica replaying it could change other rows than the source did.
var unsafeForStatementBinlog = regexp.MustCompile(`(?is)\bLIMIT\b|\bSKIP\s+LOCKED\b`)

// CheckBinlogSafe reports each of stmts (name to text) that changes rows
// (INSERT, UPDATE, DELETE, REPLACE) with a LIMIT or SKIP LOCKED in it:
// MySQL and MariaDB write such a statement to a statement-format binary
// log with note 1592 (SKIP LOCKED is reason 4175), and replicas may apply
// it to other rows. Locking reads (SELECT ... FOR UPDATE SKIP LOCKED) are
// not logged and are allowed.
func CheckBinlogSafe(tb testing.TB, stmts map[string]string) {
	tb.Helper()
	for name, text := range stmts {
		verb := strings.ToUpper(strings.Fields(text + " x")[0])
		switch verb {
		case "INSERT", "UPDATE", "DELETE", "REPLACE":
			if unsafeForStatementBinlog.MatchString(text) {
				tb.Errorf("%s changes rows with a LIMIT or SKIP LOCKED: unsafe under binlog_format=STATEMENT (lock the rows with a SELECT first, then change them by key)", name)
			}
		}
	}
}
