package bench_test

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTick is the unit of the CPU times in /proc (USER_HZ, 100 on Linux).
const clockTick = 10 * time.Millisecond

// cpuSample is what the machine's CPUs did so far, split by who did it, and
// this process's heap allocations.
//
// PostgreSQL's share counts the backends serving this process's
// connections (matched by client port) and the server's own background
// processes (WAL writer, checkpointer, autovacuum...), not the backends of
// other clients: other engineers' tests on this shared machine go to
// others. A backend that exits between two samples loses its time; the
// benchmarks keep their pools open.
type cpuSample struct {
	goCPU   time.Duration // this process
	pgCPU   time.Duration // PostgreSQL: our backends and background processes
	others  time.Duration // everything else the machine ran
	mallocs uint64
	walk    time.Duration // this process's CPU spent taking the sample
}

// processCPU returns the CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func sampleCPU() cpuSample {
	var s cpuSample
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	s.mallocs = ms.Mallocs
	walkStart := processCPU()
	ours := ourClientPorts()
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
		cpu := time.Duration(ut+st) * clockTick
		cmd, _ := os.ReadFile(filepath.Join(filepath.Dir(p), "cmdline"))
		if port, ok := backendClientPort(string(cmd)); !ok || ours[port] {
			s.pgCPU += cpu
		}
	}
	s.goCPU = processCPU()
	s.others = machineBusy() - s.goCPU - s.pgCPU
	// The walk over /proc above is the instrument, not the work measured:
	// a difference of two samples counts this process's CPU from the end
	// of the first walk to the start of the second.
	s.walk = s.goCPU - walkStart
	return s
}

func (a cpuSample) sub(b cpuSample) cpuSample {
	return cpuSample{
		goCPU:   a.goCPU - a.walk - b.goCPU,
		pgCPU:   a.pgCPU - b.pgCPU,
		others:  a.others - b.others,
		mallocs: a.mallocs - b.mallocs,
	}
}

// othersShare is the share of the machine's capacity over wall that others
// used, in percent.
func (a cpuSample) othersShare(wall time.Duration) float64 {
	return 100 * float64(a.others) / float64(wall) / float64(runtime.NumCPU())
}

// backendClientPort returns the client port in a PostgreSQL backend's
// process title ("postgres: 15/main: user db 127.0.0.1(34994) idle"); ok is
// false for background processes, which have no client.
func backendClientPort(cmdline string) (int, bool) {
	cmdline = strings.ReplaceAll(cmdline, "\x00", " ")
	for _, f := range strings.Fields(cmdline) {
		i := strings.LastIndexByte(f, '(')
		if i <= 0 || !strings.HasSuffix(f, ")") {
			continue
		}
		if port, err := strconv.Atoi(f[i+1 : len(f)-1]); err == nil {
			return port, true
		}
	}
	return 0, false
}

// ourClientPorts returns the local TCP ports of this process's sockets.
func ourClientPorts() map[int]bool {
	inodes := map[string]bool{}
	fds, _ := filepath.Glob("/proc/self/fd/*")
	for _, fd := range fds {
		if l, err := os.Readlink(fd); err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[l[len("socket:["):len(l)-1]] = true
		}
	}
	ports := map[int]bool{}
	for _, tab := range []string{"/proc/self/net/tcp", "/proc/self/net/tcp6"} {
		f, err := os.Open(tab)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			fs := strings.Fields(sc.Text())
			if len(fs) < 10 || !inodes[fs[9]] {
				continue
			}
			if i := strings.LastIndexByte(fs[1], ':'); i >= 0 {
				if p, err := strconv.ParseInt(fs[1][i+1:], 16, 32); err == nil {
					ports[int(p)] = true
				}
			}
		}
		_ = f.Close()
	}
	return ports
}

// machineBusy returns the time all CPUs spent on anything but idle and
// iowait since boot (/proc/stat).
func machineBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 8 || f[0] != "cpu" {
		return 0
	}
	var busy int64
	for i, v := range f[1:] {
		if i == 3 || i == 4 || i >= 8 { // idle, iowait; guest time is in user already
			continue
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		busy += n
	}
	return time.Duration(busy) * clockTick
}
