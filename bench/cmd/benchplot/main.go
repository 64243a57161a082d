// Command benchplot draws the plots of docs/benchmarks.md from `go test
// -bench` output. It reads three files from the input directory and writes
// one SVG for each to the output directory:
//
//	relay-backlog.txt BenchmarkRelayBacklog -> relay-drain.svg: drain rate
//	                                          against backlog size, native
//	                                          forwarder and stock forwarder
//	latency.txt   BenchmarkCommitToPublish -> commit-to-publish.svg: the
//	                                          latency's p50, p99 and max
//	dispatch.txt  BenchmarkDispatch        -> dispatch.svg: time per command
//	                                          against events per command,
//	                                          with and without the outbox
//
// Each plot shows the median of the runs in its file (-count) as a filled
// marker and every run as a hollow dot. It uses the standard library only
// and writes the SVG by hand; `make plots` runs it as
//
//	go run ./bench/cmd/benchplot -in bench/results -out docs/img
package main

import (
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
)

// Colours of the series, the same in every plot.
const (
	colNative = "#1f5fa8"
	colStock  = "#c8372d"
	colFloor  = "#7a7a7a"
	colQuiet  = "#2e8b57"
)

// A plot is one output file built from one input file.
type plot struct {
	in, out string
	build   func(rs *results, file string) (chart, error)
}

var plots = []plot{
	{"relay-backlog.txt", "relay-drain.svg", drainChart},
	{"latency.txt", "commit-to-publish.svg", latencyChart},
	{"dispatch.txt", "dispatch.svg", dispatchChart},
}

func main() {
	in := flag.String("in", "bench/results", "directory of `go test -bench` output files")
	out := flag.String("out", "docs/img", "directory the SVG files are written to")
	flag.Parse()
	if err := run(*in, *out); err != nil {
		fmt.Fprintln(os.Stderr, "benchplot:", err)
		os.Exit(1)
	}
}

// run reads every input of plots from in and writes its SVG to out.
func run(in, out string) error {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	for _, p := range plots {
		f, err := os.Open(filepath.Join(in, p.in))
		if err != nil {
			return err
		}
		rs, err := parse(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", p.in, err)
		}
		c, err := p.build(rs, filepath.ToSlash(filepath.Join(in, p.in)))
		if err != nil {
			return fmt.Errorf("%s: %w", p.in, err)
		}
		if err := os.WriteFile(filepath.Join(out, p.out), []byte(c.svg()), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// need returns the median and the single runs of a metric, or an error
// naming what is missing from the file.
func need(rs *results, name, unit string) (float64, []float64, error) {
	vs := rs.values(name, unit)
	m, ok := median(vs)
	if !ok {
		return 0, nil, fmt.Errorf("no %s in %s", unit, name)
	}
	return m, vs, nil
}

// source is the subtitle line: where the figures come from.
func source(rs *results, file string) string {
	n := 0
	name := ""
	if len(rs.lines) > 0 {
		name = rs.lines[0].name
	}
	for _, l := range rs.lines {
		if l.name == name {
			n++
		}
	}
	s := fmt.Sprintf("%s: one go test run, -count %d", file, n)
	if cpu := rs.header["cpu"]; cpu != "" {
		s += "; cpu: " + cpu
	}
	var others []float64
	for _, l := range rs.lines {
		if v, ok := l.metrics["others-cpu-%"]; ok {
			others = append(others, v)
		}
	}
	if m, ok := median(others); ok {
		s += fmt.Sprintf("; other processes: %.0f%% of the machine", m)
	}
	return s
}

func runsAt(x float64, vs []float64, scale float64) []point {
	var out []point
	for _, v := range vs {
		out = append(out, point{x: x, y: v * scale})
	}
	return out
}

// backlogs are BenchmarkRelayBacklog's backlog sizes.
var backlogs = []float64{1_000, 10_000, 50_000, 100_000}

func drainChart(rs *results, file string) (chart, error) {
	get := func(backend string) ([]point, []point, error) {
		var pts, runs []point
		for _, n := range backlogs {
			m, vs, err := need(rs, fmt.Sprintf("BenchmarkRelayBacklog/backlog=%.0f/backend=%s", n, backend), "events/s")
			if err != nil {
				return nil, nil, err
			}
			pts = append(pts, point{x: n, y: m, label: thousands(m) + "/s"})
			runs = append(runs, runsAt(n, vs, 1)...)
		}
		return pts, runs, nil
	}
	native, nativeRuns, err := get("native")
	if err != nil {
		return chart{}, err
	}
	stock, stockRuns, err := get("watermill-sql-forwarder")
	if err != nil {
		return chart{}, err
	}
	// Labels clear of the lines and of each other: the native ones above,
	// the last two to the left; the stock ones below.
	last := len(backlogs) - 1
	for i := range native {
		native[i].dy = -6
		stock[i].dy = 22
		if i >= last-1 {
			native[i].left, native[i].dx = true, -6
			stock[i].left, stock[i].dx = true, -6
		}
	}
	native[last].dy = -26 // above the 50,000 label
	note := fmt.Sprintf("The native forwarder drains %.1f× as fast as the stock one at 1,000 events and %.1f× at 100,000:",
		native[0].y/stock[0].y, native[last].y/stock[last].y) +
		"\nits rate rises with the backlog (batches of 2,000, pipelined) and holds from 50,000 on; the stock one's falls." +
		"\nEvents of about 200 bytes on 50 partition keys, relayed into a Watermill GoChannel; PostgreSQL on the same machine."
	return chart{
		title:    "Relay: drain rate against backlog size",
		subtitle: source(rs, file),
		note:     note,
		x: axis{label: "backlog when the drain starts (events, log scale)", min: 600, max: 170_000, log: true,
			ticks: []tick{{1_000, "1,000"}, {10_000, "10,000"}, {50_000, "50,000"}, {100_000, "100,000"}}},
		y: axis{label: "drain rate (events/s, log scale)", min: 1_000, max: 500_000, log: true},
		series: []series{
			{name: "native: outbox.Forwarder on gormstore\n(defaults, batch 2,000)", color: colNative, points: native, runs: nativeRuns},
			{name: "stock: watermill-sql Subscriber +\ncomponents/forwarder (batch 100)", color: colStock, points: stock, runs: stockRuns},
		},
	}, nil
}

func latencyChart(rs *results, file string) (chart, error) {
	units := []struct {
		unit, label string
	}{{"p50-ms", "p50"}, {"p99-ms", "p99"}, {"max-ms", "max"}}
	var ss []series
	lo, hi := math.Inf(1), math.Inf(-1)
	var idle []string
	// The lower line's labels go below right of its points, the upper's
	// above left: both clear of the rising lines.
	for _, b := range []struct {
		sub, name, color string
		below            bool
	}{
		{"native", "native: forwarder woken after commit\n(Wake + LISTEN/NOTIFY)", colNative, true},
		{"watermill-sql-forwarder", "stock: watermill-sql Subscriber\n(poll 10 ms) + components/forwarder", colStock, false},
	} {
		name := "BenchmarkCommitToPublish/backend=" + b.sub
		s := series{name: b.name, color: b.color}
		for i, u := range units {
			m, vs, err := need(rs, name, u.unit)
			if err != nil {
				return chart{}, err
			}
			pt := point{x: float64(i), y: m, label: msLabel(m), dy: 20}
			if !b.below {
				pt.left, pt.dx, pt.dy = true, -9, -9
			}
			s.points = append(s.points, pt)
			s.runs = append(s.runs, runsAt(float64(i), vs, 1)...)
			for _, v := range append(vs, m) {
				lo, hi = math.Min(lo, v), math.Max(hi, v)
			}
		}
		ss = append(ss, s)
		if q, _, err := need(rs, name, "idle-queries/s"); err == nil {
			idle = append(idle, fmt.Sprintf("%s %s", strings.SplitN(b.name, ":", 2)[0], human(q)))
		}
	}
	var ticks []tick
	for i, u := range units {
		ticks = append(ticks, tick{float64(i), u.label})
	}
	note := "From the return of the command's commit to receipt by the subscriber; 1,000 commands/s for 10 s, one event each."
	if len(idle) > 0 {
		note += "\nStatements per second the relay sends while nothing is pending: " + strings.Join(idle, ", ") + "."
	}
	return chart{
		title:    "Commit-to-publish latency",
		subtitle: source(rs, file),
		note:     note,
		x:        axis{label: "percentile of the events of a run", min: -0.4, max: 2.6, ticks: ticks},
		y: axis{label: "latency (ms, log scale)", log: true,
			min: math.Pow(10, math.Floor(math.Log10(lo))), max: math.Pow(10, math.Ceil(math.Log10(hi*1.3)))},
		series: ss,
	}, nil
}

// thousands writes 116609.4 as "116,609".
func thousands(v float64) string {
	s := fmt.Sprintf("%.0f", v)
	for i := len(s) - 3; i > 0 && s[i-1] != '-'; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

func msLabel(v float64) string {
	if v < 10 {
		return fmt.Sprintf("%.2f ms", v)
	}
	return fmt.Sprintf("%.1f ms", v)
}

func dispatchChart(rs *results, file string) (chart, error) {
	const us = 1e-3 // ns/op to µs per command
	off, offRuns, err := need(rs, "BenchmarkDispatch/outbox=off", "ns/op")
	if err != nil {
		return chart{}, err
	}
	label := func(m float64) string { return fmt.Sprintf("%.0f µs (%.2f×)", m*us, m/off) }
	// Labels below right of the points at 1 event, under the rising line,
	// and above left of those at 10, clear of the legend.
	line := func(name, color string, subs map[float64]string, noLine bool, dy float64) (series, error) {
		s := series{name: name, color: color, noLine: noLine}
		for _, x := range []float64{1, 10} {
			sub, ok := subs[x]
			if !ok {
				continue
			}
			m, vs, err := need(rs, "BenchmarkDispatch/"+sub, "ns/op")
			if err != nil {
				return series{}, err
			}
			pt := point{x: x, y: m * us, label: label(m), dy: dy}
			if x == 10 {
				pt.left, pt.dx, pt.dy = true, -9, -10
			}
			s.points = append(s.points, pt)
			s.runs = append(s.runs, runsAt(x, vs, us)...)
		}
		return s, nil
	}
	outbox, err := line("with outbox: middleware.Transactional\n+ gormstore (defaults)", colNative,
		map[float64]string{1: "outbox=1event", 10: "outbox=10events"}, false, 18)
	if err != nil {
		return chart{}, err
	}
	stock, err := line("stock: watermill-sql Publisher on\nthe transaction (1 event)", colStock,
		map[float64]string{1: "stock=watermill-sql"}, true, 20)
	if err != nil {
		return chart{}, err
	}
	ss := []series{
		{name: "without outbox: BEGIN, INSERT,\nCOMMIT (baseline)", color: colFloor, dash: true,
			points: []point{{x: 0, y: off * us, label: fmt.Sprintf("%.0f µs", off*us), dy: 20}, {x: 10.5, y: off * us}},
			runs:   runsAt(0, offRuns, us)},
		outbox,
	}
	ss = append(ss, stock)
	hi := 0.0
	for _, s := range ss {
		for _, p := range append(s.points, s.runs...) {
			hi = math.Max(hi, p.y)
		}
	}
	var ticks []tick
	for x := 0; x <= 10; x++ {
		ticks = append(ticks, tick{float64(x), fmt.Sprint(x)})
	}
	return chart{
		title:    "Write path: time per command against events per command",
		subtitle: source(rs, file),
		note: "A command that inserts one business row on PostgreSQL, 8 in flight; wall time per command (ns/op),\n" +
			"in brackets the ratio to the baseline without outbox. The stock publisher writes one event per call.",
		x:      axis{label: "events emitted per command", min: -0.3, max: 10.5, ticks: ticks},
		y:      axis{label: "time per command (µs)", min: 0, max: math.Ceil(hi*1.15/50) * 50, format: thousands},
		series: ss,
	}, nil
}
