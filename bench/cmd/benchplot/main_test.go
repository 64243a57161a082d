package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Lines as `go test -bench` wrote them (tabs, the -2 GOMAXPROCS suffix,
// b.Log output and the --- BENCH lines in between).
const relayOut = "goos: linux\n" +
	"goarch: amd64\n" +
	"pkg: github.com/txoutbox/txoutbox/bench\n" +
	"cpu: AMD EPYC\n" +
	"BenchmarkRelay/backend=native-2         \t       1\t        37.34 allocs/event\t     24348 events/s\t        13.91 go-cpu-us/event\t     41072 ns/event\t        71.04 others-cpu-%\t        10.20 pg-cpu-us/event\n" +
	"--- BENCH: BenchmarkRelay/backend=native-2\n" +
	"    timed_test.go:80: 25 batches: claim 9.1 ms, publish 8.8 ms\n" +
	"BenchmarkRelay/backend=native-2         \t       1\t        37.32 allocs/event\t     37899 events/s\t        12.76 go-cpu-us/event\t     26386 ns/event\t        59.26 others-cpu-%\t         9.400 pg-cpu-us/event\n" +
	"BenchmarkRelay/backend=native-2         \t       1\t        37.32 allocs/event\t     32339 events/s\t        12.97 go-cpu-us/event\t     30922 ns/event\t        62.86 others-cpu-%\t        10.60 pg-cpu-us/event\n" +
	"BenchmarkRelay/backend=native-batch-1000-2         \t       1\t        37.30 allocs/event\t     30000 events/s\t        13.00 go-cpu-us/event\t     33333 ns/event\t        60.00 others-cpu-%\t        10.00 pg-cpu-us/event\n" +
	"BenchmarkRelay/backend=watermill-sql-forwarder-2   \t       1\t       124.2 allocs/event\t      6079 events/s\t        41.50 go-cpu-us/event\t    164500 ns/event\t         2.000 others-cpu-%\t       129.4 pg-cpu-us/event\n" +
	"BenchmarkRelay/backend=native-200k-2    \t       1\t        37.20 allocs/event\t    107174 events/s\t         8.500 go-cpu-us/event\t      9330 ns/event\t         1.000 others-cpu-%\t         7.300 pg-cpu-us/event\n" +
	"PASS\n" +
	"ok  \tgithub.com/txoutbox/txoutbox/bench\t180.123s\n"

// backlogOut is BenchmarkRelayBacklog output, one run per backlog.
const backlogOut = "cpu: AMD EPYC\n" +
	"BenchmarkRelayBacklog/backlog=1000/backend=native-2 \t 1\t 35280 events/s\n" +
	"BenchmarkRelayBacklog/backlog=1000/backend=watermill-sql-forwarder-2 \t 1\t 13531 events/s\n" +
	"BenchmarkRelayBacklog/backlog=10000/backend=native-2 \t 1\t 63156 events/s\n" +
	"BenchmarkRelayBacklog/backlog=10000/backend=watermill-sql-forwarder-2 \t 1\t 9275 events/s\n" +
	"BenchmarkRelayBacklog/backlog=50000/backend=native-2 \t 1\t 75411 events/s\n" +
	"BenchmarkRelayBacklog/backlog=50000/backend=watermill-sql-forwarder-2 \t 1\t 4012 events/s\n" +
	"BenchmarkRelayBacklog/backlog=100000/backend=native-2 \t 1\t 89005 events/s\n" +
	"BenchmarkRelayBacklog/backlog=100000/backend=watermill-sql-forwarder-2 \t 1\t 4000 events/s\n"

func TestParse(t *testing.T) {
	rs, err := parse(strings.NewReader(relayOut))
	if err != nil {
		t.Fatal(err)
	}
	if got := len(rs.lines); got != 6 {
		t.Fatalf("parsed %d result lines, want 6", got)
	}
	if rs.header["cpu"] != "AMD EPYC" {
		t.Errorf("cpu header %q", rs.header["cpu"])
	}
	// The common -2 suffix is gone; the names' own numbers are not.
	got := rs.values("BenchmarkRelay/backend=native", "events/s")
	if want := []float64{24348, 37899, 32339}; !equal(got, want) {
		t.Errorf("native events/s = %v, want %v", got, want)
	}
	if v := rs.values("BenchmarkRelay/backend=native-batch-1000", "events/s"); !equal(v, []float64{30000}) {
		t.Errorf("native-batch-1000 events/s = %v", v)
	}
	if v := rs.values("BenchmarkRelay/backend=native", "pg-cpu-us/event"); !equal(v, []float64{10.2, 9.4, 10.6}) {
		t.Errorf("native pg-cpu-us/event = %v", v)
	}
	if m, _ := median(rs.values("BenchmarkRelay/backend=native", "events/s")); m != 32339 {
		t.Errorf("median = %v, want 32339", m)
	}
	if m, _ := median([]float64{4, 1, 3, 2}); m != 2.5 {
		t.Errorf("median of an even count = %v, want 2.5", m)
	}
}

func TestParseKeepsNumberWithoutCommonSuffix(t *testing.T) {
	// GOMAXPROCS=1: go test appends no suffix, so none is removed.
	in := "BenchmarkRelay/backend=native-batch-1000 \t 1\t 30000 events/s\n" +
		"BenchmarkRelay/backend=native \t 1\t 31000 events/s\n"
	rs, err := parse(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if rs.lines[0].name != "BenchmarkRelay/backend=native-batch-1000" {
		t.Errorf("name %q", rs.lines[0].name)
	}
}

func TestParseSkipsOtherLines(t *testing.T) {
	for _, l := range []string{
		"BenchmarkRelay/backend=native-2",                // no fields: a --- BENCH header's tail
		"BenchmarkRelay/backend=native-2 \t 1\t 3 x\t 4", // odd field count
		"BenchmarkX-2 \t one\t 3 events/s",               // no iteration count
		"    relay_bench_test.go:110: Benchmark 1 2 3",
	} {
		if r, ok := parseLine(strings.TrimSpace(l)); ok {
			t.Errorf("parseLine(%q) = %+v, want skipped", l, r)
		}
	}
}

func TestRunWritesSVGs(t *testing.T) {
	in, out := t.TempDir(), filepath.Join(t.TempDir(), "img")
	files := map[string]string{
		"relay-backlog.txt": backlogOut,
		"latency.txt": "cpu: AMD EPYC\n" +
			"BenchmarkCommitToPublish/backend=native-2         \t       1\t      1000 cmds/s\t         0.5000 idle-queries/s\t         0.5000 idle-roundtrips/s\t         0 idle-xacts/s\t         5.900 max-ms\t         3.000 others-cpu-%\t         0.3100 p50-ms\t         1.400 p99-ms\t         7.800 queries/event\n" +
			"BenchmarkCommitToPublish/backend=watermill-sql-forwarder-2         \t       1\t      1000 cmds/s\t       270.3 idle-queries/s\t       270.3 idle-roundtrips/s\t        90.10 idle-xacts/s\t        16.90 max-ms\t         3.000 others-cpu-%\t         3.880 p50-ms\t        11.67 p99-ms\t         1.390 queries/event\n",
		"dispatch.txt": "cpu: AMD EPYC\n" +
			"BenchmarkDispatch/outbox=off-2         \t   36000\t    100320 ns/op\t      9968 commands/s\t     61985 go-cpu-ns/op\t    5400 B/op\t      58 allocs/op\n" +
			"BenchmarkDispatch/outbox=1event-2      \t   23000\t    153011 ns/op\t      6535 commands/s\t      6535 events/s\t     97380 go-cpu-ns/op\t   10200 B/op\t     135 allocs/op\n" +
			"BenchmarkDispatch/outbox=10events-2    \t   14000\t    255899 ns/op\t      3908 commands/s\t     39078 events/s\t    181661 go-cpu-ns/op\t   63000 B/op\t     366 allocs/op\n" +
			"BenchmarkDispatch/stock=watermill-sql-2\t   27000\t    129935 ns/op\t      7696 commands/s\t      7696 events/s\t     86295 go-cpu-ns/op\t    9000 B/op\t     113 allocs/op\n",
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(in, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := run(in, out); err != nil {
		t.Fatal(err)
	}
	for _, p := range plots {
		b, err := os.ReadFile(filepath.Join(out, p.out))
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		if !strings.HasPrefix(s, "<svg ") || !strings.HasSuffix(s, "</svg>\n") {
			t.Errorf("%s is not an SVG document", p.out)
		}
		for _, want := range []string{"<polyline", "</text>"} {
			if !strings.Contains(s, want) {
				t.Errorf("%s has no %s", p.out, want)
			}
		}
	}
	// The figures of the input appear as labels.
	b, _ := os.ReadFile(filepath.Join(out, "relay-drain.svg"))
	for _, want := range []string{"35,280/s", "13,531/s", "89,005/s", "2.6× as fast as the stock one at 1,000 events and 22.3× at 100,000"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("relay-drain.svg lacks %q", want)
		}
	}
	b, _ = os.ReadFile(filepath.Join(out, "dispatch.svg"))
	for _, want := range []string{"100 µs", "153 µs (1.53×)", "256 µs (2.55×)", "130 µs (1.30×)"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("dispatch.svg lacks the label %q", want)
		}
	}
	b, _ = os.ReadFile(filepath.Join(out, "commit-to-publish.svg"))
	for _, want := range []string{"0.31 ms", "11.7 ms", "16.9 ms"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("commit-to-publish.svg lacks the label %q", want)
		}
	}
}

func TestRunMissingBenchmark(t *testing.T) {
	in := t.TempDir()
	for _, p := range plots {
		if err := os.WriteFile(filepath.Join(in, p.in), []byte("PASS\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	err := run(in, t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "relay-backlog.txt: no events/s in BenchmarkRelayBacklog/backlog=1000/backend=native") {
		t.Fatalf("run = %v, want an error naming the missing benchmark", err)
	}
}

func equal(a, b []float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
