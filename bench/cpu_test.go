package bench_test

import (
	"bytes"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"time"
)

// clockTick is the unit of utime and stime in /proc/PID/stat (USER_HZ,
// 100 on Linux).
const clockTick = 10 * time.Millisecond

// cpuSample is the CPU time used so far by this process and by every
// PostgreSQL server process on the machine (all sessions, not only the
// benchmark's: run the benchmarks alone), and this process's heap
// allocations.
type cpuSample struct {
	goCPU, pgCPU time.Duration
	mallocs      uint64
}

func sampleCPU() cpuSample {
	var s cpuSample
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	s.mallocs = ms.Mallocs
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		s.goCPU = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ... utime(14) stime(15)
		open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
		if open < 0 || end < open || string(b[open+1:end]) != "postgres" {
			continue
		}
		f := bytes.Fields(b[end+1:])
		if len(f) < 13 {
			continue
		}
		ut, _ := strconv.ParseInt(string(f[11]), 10, 64)
		st, _ := strconv.ParseInt(string(f[12]), 10, 64)
		s.pgCPU += time.Duration(ut+st) * clockTick
	}
	return s
}

func (a cpuSample) sub(b cpuSample) cpuSample {
	return cpuSample{a.goCPU - b.goCPU, a.pgCPU - b.pgCPU, a.mallocs - b.mallocs}
}
