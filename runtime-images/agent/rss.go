package main

import (
	"bytes"
	"os"
	"strconv"
	"sync"
	"syscall"
)

// rssReader reads a process's peak resident set size (VmHWM) for the REPORT line. It keeps
// /proc/<pid>/status open and re-reads it with one pread per invocation.
type rssReader struct {
	mu  sync.Mutex
	f   *os.File
	fd  int // f's descriptor
	buf []byte
}

// peakMB is the peak RSS of pid in MB, rounded up; 0 if unknown.
func (r *rssReader) peakMB(pid int) int {
	if pid <= 0 {
		return 0
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
		if err != nil {
			return 0
		}
		r.f, r.fd, r.buf = f, int(f.Fd()), make([]byte, 4096)
	}
	// One pread: procfs makes the whole file for a read at offset 0. (os.File.ReadAt reads again until the
	// buffer is full, and that second pread, at the end of the file, made the whole file once more.)
	n, err := syscall.Pread(r.fd, r.buf, 0)
	if n <= 0 || err != nil {
		return 0
	}
	return vmHWMMB(r.buf[:n])
}

func (r *rssReader) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f != nil {
		_ = r.f.Close()
		r.f = nil
	}
}

func vmHWMMB(status []byte) int {
	i := bytes.Index(status, []byte("VmHWM:"))
	if i < 0 {
		return 0
	}
	rest := status[i+len("VmHWM:"):]
	if j := bytes.IndexByte(rest, '\n'); j >= 0 {
		rest = rest[:j]
	}
	f := bytes.Fields(rest) // e.g. ["56320", "kB"]
	if len(f) == 0 {
		return 0
	}
	kb, err := strconv.Atoi(string(f[0]))
	if err != nil {
		return 0
	}
	return (kb + 1023) / 1024
}
