package examples_test

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the included files in docs/getting-started.md")

// include is a marker line followed by a fenced block showing a file whole.
var include = regexp.MustCompile("(?m)^<!-- include: (\\S+) -->\n(```go\n(?s:.*?)```\n)?")

// TestGuideShowsTheExamples checks that every program in the getting-started
// guide is a file of this repository, shown as it is: a Go block must
// follow an include marker and match the file byte for byte. Run
// `go test ./examples -update` after changing an example.
func TestGuideShowsTheExamples(t *testing.T) {
	guidePath := filepath.Join("..", "docs", "getting-started.md")
	guide, err := os.ReadFile(guidePath)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	var failed bool
	got := include.ReplaceAllFunc(guide, func(m []byte) []byte {
		sub := include.FindSubmatch(m)
		path := string(sub[1])
		seen[path] = true
		src, err := os.ReadFile(filepath.Join("..", filepath.FromSlash(path)))
		if err != nil {
			t.Errorf("the guide includes %s: %v", path, err)
			failed = true
			return m
		}
		want := "<!-- include: " + path + " -->\n```go\n" + string(src) + "```\n"
		if string(m) != want {
			if !*update {
				t.Errorf("docs/getting-started.md does not show %s as it is (run go test ./examples -update)", path)
			}
			failed = true
		}
		return []byte(want)
	})
	if *update && failed {
		if err := os.WriteFile(guidePath, got, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Log("rewrote", guidePath)
	}
	// Every Go block is an included file.
	if n, m := bytes.Count(got, []byte("```go\n")), len(seen); n != m {
		t.Errorf("the guide has %d Go blocks and %d included files: every program in it must be a file under examples/", n, m)
	}
	// Every example folder is in the guide.
	dirs, err := os.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range dirs {
		if !d.IsDir() {
			continue
		}
		found := false
		for p := range seen {
			found = found || strings.HasPrefix(p, "examples/"+d.Name()+"/")
		}
		if !found {
			t.Errorf("examples/%s is not shown in docs/getting-started.md", d.Name())
		}
	}
}

// TestComparisonNamesRealTests checks that every test docs/comparison.md
// cites as evidence exists.
func TestComparisonNamesRealTests(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "docs", "comparison.md"))
	if err != nil {
		t.Fatal(err)
	}
	defined := map[string]bool{}
	err = filepath.WalkDir("..", func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, "_test.go") {
			return err
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range testFunc.FindAllSubmatch(src, -1) {
			defined[string(m[1])] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	cited := regexp.MustCompile("`(?:[a-z]+\\.)?(Test[A-Za-z0-9_]+)`").FindAllSubmatch(doc, -1)
	if len(cited) == 0 {
		t.Fatal("docs/comparison.md cites no test")
	}
	for _, m := range cited {
		if !defined[string(m[1])] {
			t.Errorf("docs/comparison.md cites %s, which no test file defines", m[1])
		}
	}
}

var testFunc = regexp.MustCompile(`(?m)^func (Test[A-Za-z0-9_]+)\(`)
