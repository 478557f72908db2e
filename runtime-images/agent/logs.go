package main

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// logger writes the runtime's output line by line and the agent's START / END / REPORT lines,
// never interleaving two lines.
type logger struct {
	mu     sync.Mutex
	stdout io.Writer
	stderr io.Writer
}

func newLogger(stdout, stderr io.Writer) *logger {
	return &logger{stdout: stdout, stderr: stderr}
}

// pipe copies r to w one line at a time until r ends. A line longer than the buffer is written
// in pieces rather than held back.
func (l *logger) pipe(r *os.File, w io.Writer) {
	defer r.Close()
	br := bufio.NewReaderSize(r, 64*1024)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			l.mu.Lock()
			_, _ = w.Write(line)
			if err == io.EOF && line[len(line)-1] != '\n' {
				_, _ = w.Write([]byte{'\n'})
			}
			l.mu.Unlock()
		}
		if err != nil && err != bufio.ErrBufferFull {
			return
		}
	}
}

func (l *logger) line(s string) {
	l.mu.Lock()
	_, _ = io.WriteString(l.stdout, s+"\n")
	l.mu.Unlock()
}

func (l *logger) start(id, version string) {
	l.line("START RequestId: " + id + " Version: " + version)
}

type reportInfo struct {
	status   string // "", "timeout", "error"
	errType  string
	memoryMB int
	maxMemMB int
	initDur  time.Duration
}

// report writes END and REPORT for inv, the way Lambda does:
//
//	REPORT RequestId: <id>\tDuration: 3.12 ms\tBilled Duration: 4 ms\tMemory Size: 128 MB\tMax Memory Used: 56 MB\tInit Duration: 200.67 ms\t
func (l *logger) report(inv *invocation, ri reportInfo) {
	// One write for both lines: fewer syscalls on the hot path.
	l.line(formatEnd(inv.id) + "\n" + formatReport(inv.id, inv.sinceStart(), ri))
}

func formatEnd(id string) string { return "END RequestId: " + id }

func formatReport(id string, d time.Duration, ri reportInfo) string {
	ms := float64(d.Nanoseconds()) / 1e6
	var b strings.Builder
	b.Grow(200)
	b.WriteString("REPORT RequestId: ")
	b.WriteString(id)
	b.WriteString("\tDuration: ")
	b.WriteString(strconv.FormatFloat(ms, 'f', 2, 64))
	b.WriteString(" ms\tBilled Duration: ")
	b.WriteString(strconv.FormatInt(billedMs(d), 10))
	b.WriteString(" ms\tMemory Size: ")
	b.WriteString(strconv.Itoa(ri.memoryMB))
	b.WriteString(" MB\tMax Memory Used: ")
	b.WriteString(strconv.Itoa(ri.maxMemMB))
	b.WriteString(" MB\t")
	if ri.initDur > 0 {
		fmt.Fprintf(&b, "Init Duration: %.2f ms\t", float64(ri.initDur.Nanoseconds())/1e6)
	}
	if ri.status != "" {
		b.WriteString("Status: ")
		b.WriteString(ri.status)
		b.WriteString("\t")
		if ri.errType != "" {
			b.WriteString("Error Type: ")
			b.WriteString(ri.errType)
			b.WriteString("\t")
		}
	}
	return b.String()
}

// billedMs rounds a duration up to the next whole millisecond, at least 1 ms.
func billedMs(d time.Duration) int64 {
	ms := int64(math.Ceil(float64(d.Nanoseconds()) / 1e6))
	if ms < 1 {
		return 1
	}
	return ms
}
