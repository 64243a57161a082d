package bench_test

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
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
//
// A sample of a MySQL/MariaDB drain (sampleMySQLCPU) counts the server's
// threads instead, in mysqlThreads; the difference of two samples puts
// the threads serving this process's connections and the server's own
// threads in dbCPU, and the connections of other clients in others.
type cpuSample struct {
	goCPU   time.Duration // this process
	pgCPU   time.Duration // PostgreSQL: our backends and background processes
	dbCPU   time.Duration // MySQL/MariaDB, in a difference of two samples
	others  time.Duration // everything else the machine ran
	busy    time.Duration // the whole machine
	mallocs uint64
	walk    time.Duration // this process's CPU spent taking the sample

	// mysql marks a sample of a MySQL/MariaDB drain; mysqlThreads holds
	// the CPU time of each of the server's threads, by thread ID, and
	// mysqlOwner who each thread served.
	mysql        bool
	mysqlThreads map[int]time.Duration
	mysqlOwner   map[int]threadOwner
}

// threadOwner is whom a MySQL/MariaDB server thread serves.
type threadOwner uint8

const (
	// ownerServer is the server's own work: a thread that serves no client
	// connection (InnoDB's background threads, an idle thread in the thread
	// cache), or one the server does not say.
	ownerServer threadOwner = iota
	ownerUs                 // a connection of this process
	ownerOther              // another client's connection
)

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
	for _, p := range processStats("postgres") {
		cmd, _ := os.ReadFile(filepath.Join(filepath.Dir(p.path), "cmdline"))
		if port, ok := backendClientPort(string(cmd)); !ok || ours[port] {
			s.pgCPU += p.cpu
		}
	}
	s.goCPU = processCPU()
	s.busy = machineBusy()
	// The walk over /proc above is the instrument, not the work measured:
	// a difference of two samples counts this process's CPU from the end
	// of the first walk to the start of the second.
	s.walk = s.goCPU - walkStart
	return s
}

// sampleMySQLCPU samples the machine as sampleCPU does, with the threads of
// the MySQL/MariaDB server process on this machine (mariadbd or mysqld)
// in place of PostgreSQL's processes. db is a pool on the server: the
// server's process list says which client connection, by its client
// port, each thread serves (MariaDB's information_schema.PROCESSLIST.TID).
// When the server does not say (MySQL has no TID column there), every
// thread counts as the server's own: the whole process.
func sampleMySQLCPU(tb testing.TB, db *sql.DB) cpuSample {
	tb.Helper()
	s := cpuSample{mysql: true, mysqlThreads: map[int]time.Duration{}, mysqlOwner: map[int]threadOwner{}}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	s.mallocs = ms.Mallocs
	walkStart := processCPU()
	servers := processStats("mariadbd", "mysqld")
	if len(servers) == 0 {
		tb.Fatal("no mariadbd or mysqld process on this machine to measure")
	}
	for _, p := range servers {
		tasks, _ := filepath.Glob(filepath.Join(filepath.Dir(p.path), "task", "[0-9]*", "stat"))
		for _, t := range tasks {
			if st, ok := readStat(t); ok {
				tid, _ := strconv.Atoi(filepath.Base(filepath.Dir(t)))
				s.mysqlThreads[tid] = st.cpu
			}
		}
	}
	ours := ourClientPorts()
	if rows, err := db.QueryContext(context.Background(),
		"SELECT TID, HOST FROM information_schema.PROCESSLIST WHERE TID IS NOT NULL"); err == nil {
		for rows.Next() {
			var tid int
			var host sql.NullString
			if rows.Scan(&tid, &host) != nil {
				break
			}
			i := strings.LastIndexByte(host.String, ':')
			if i < 0 {
				continue // a server thread, or a client on the local socket
			}
			if port, err := strconv.Atoi(host.String[i+1:]); err == nil {
				if ours[port] {
					s.mysqlOwner[tid] = ownerUs
				} else {
					s.mysqlOwner[tid] = ownerOther
				}
			}
		}
		_ = rows.Close()
	}
	s.goCPU = processCPU()
	s.busy = machineBusy()
	s.walk = s.goCPU - walkStart
	return s
}

// procStat is the CPU time of one process or thread, from its stat file.
type procStat struct {
	path string
	cpu  time.Duration
}

// processStats returns the processes whose command name is one of names.
func processStats(names ...string) []procStat {
	var out []procStat
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range stats {
		if st, ok := readStat(p); ok && slices.Contains(names, st.comm) {
			out = append(out, procStat{p, st.cpu})
		}
	}
	return out
}

// statLine is what readStat reads of a stat file.
type statLine struct {
	comm string
	cpu  time.Duration
}

// readStat reads the command name and the user and system CPU time of a
// /proc stat file ("pid (comm) state ppid ... utime(14) stime(15)").
func readStat(path string) (statLine, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return statLine{}, false
	}
	open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || end < open {
		return statLine{}, false
	}
	f := bytes.Fields(b[end+1:])
	if len(f) < 13 {
		return statLine{}, false
	}
	ut, _ := strconv.ParseInt(string(f[11]), 10, 64)
	st, _ := strconv.ParseInt(string(f[12]), 10, 64)
	return statLine{string(b[open+1 : end]), time.Duration(ut+st) * clockTick}, true
}

// sub returns what happened between sample b and the later sample a.
//
// A MySQL/MariaDB thread's time goes to dbCPU when it serves this process
// at a, or serves no client at a and did not serve another client at b
// (a connection of ours that ended, a thread back in the cache); to
// others when it serves another client at a, or served one at b and no
// client at a. A thread that ended between the two loses its time.
func (a cpuSample) sub(b cpuSample) cpuSample {
	d := cpuSample{
		goCPU:   a.goCPU - a.walk - b.goCPU,
		pgCPU:   a.pgCPU - b.pgCPU,
		mallocs: a.mallocs - b.mallocs,
		mysql:   a.mysql,
	}
	for tid, cpu := range a.mysqlThreads {
		used := cpu - b.mysqlThreads[tid]
		if used < 0 { // a new thread under an old thread's ID
			used = cpu
		}
		switch a.mysqlOwner[tid] {
		case ownerUs:
			d.dbCPU += used
		case ownerServer:
			if b.mysqlOwner[tid] != ownerOther {
				d.dbCPU += used
			}
		}
	}
	d.others = (a.busy - b.busy) - (a.goCPU - b.goCPU) - d.pgCPU - d.dbCPU
	return d
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
