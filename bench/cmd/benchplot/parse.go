package main

import (
	"bufio"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// result is one line of `go test -bench` output: a benchmark's name (the
// -GOMAXPROCS suffix removed), its iterations and its metrics by unit.
type result struct {
	name    string
	n       int
	metrics map[string]float64
}

// results is a parsed file: every line in order, and the header lines
// (goos, goarch, pkg, cpu) by key.
type results struct {
	lines  []result
	header map[string]string
}

var procsSuffix = regexp.MustCompile(`-(\d+)$`)

// parse reads `go test -bench` output. Lines that are not benchmark results
// (logs, PASS, ok) are skipped. The -N suffix that go test appends to every
// name when GOMAXPROCS is not 1 is removed only when every result line
// carries the same one, so a name ending in a number of its own survives.
func parse(r io.Reader) (*results, error) {
	res := &results{header: map[string]string{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		for _, k := range []string{"goos", "goarch", "pkg", "cpu"} {
			if v, ok := strings.CutPrefix(line, k+": "); ok {
				res.header[k] = v
			}
		}
		if r, ok := parseLine(line); ok {
			res.lines = append(res.lines, r)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	suffix := ""
	for i, l := range res.lines {
		m := procsSuffix.FindString(l.name)
		if m == "" || (i > 0 && m != suffix) {
			suffix = ""
			break
		}
		suffix = m
	}
	if suffix != "" {
		for i := range res.lines {
			res.lines[i].name = strings.TrimSuffix(res.lines[i].name, suffix)
		}
	}
	return res, nil
}

// parseLine parses "BenchmarkX/sub-2  3  116609 events/s  8.0 go-cpu-us/event ...".
func parseLine(line string) (result, bool) {
	f := strings.Fields(line)
	if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") || len(f)%2 != 0 {
		return result{}, false
	}
	n, err := strconv.Atoi(f[1])
	if err != nil {
		return result{}, false
	}
	r := result{name: f[0], n: n, metrics: map[string]float64{}}
	for i := 2; i+1 < len(f); i += 2 {
		v, err := strconv.ParseFloat(f[i], 64)
		if err != nil {
			return result{}, false
		}
		r.metrics[f[i+1]] = v
	}
	return r, true
}

// values returns the metric unit of every line of benchmark name, in the
// order of the file (one per -count run).
func (rs *results) values(name, unit string) []float64 {
	var out []float64
	for _, l := range rs.lines {
		if l.name != name {
			continue
		}
		if v, ok := l.metrics[unit]; ok {
			out = append(out, v)
		}
	}
	return out
}

// median of vs (the mean of the middle two for an even count); ok is false
// for none.
func median(vs []float64) (float64, bool) {
	if len(vs) == 0 {
		return 0, false
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2], true
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2, true
}
