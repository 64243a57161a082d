// Package sqltmpltest keeps the final text of rendered SQL statements in
// golden files, so that a change to a statement shows in review as a change
// to its file.
package sqltmpltest

import (
	"os"
	"path/filepath"
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
