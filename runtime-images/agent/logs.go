package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// logger writes the runtime's output line by line and the agent's START / END / REPORT lines,
// never interleaving two lines.
type logger struct {
	mu     sync.Mutex
	stdout io.Writer
	stderr io.Writer
	ship   *shipper // nil: log shipping off (logship.go)
	format atomic.Pointer[logFormat]
}

func newLogger(stdout, stderr io.Writer) *logger {
	return &logger{stdout: stdout, stderr: stderr}
}

// The agent's own lines about a worker (START, END, REPORT, timeouts) travel through that worker's
// stdout pipe, behind a marker, so that they come out in order with what the runtime printed: an
// END line never overtakes the handler's last log line. The agent keeps a copy of the pipe's write
// end for this (procLog) and closes it once the worker has exited.
const agentMark = "\x00kubelambda-agent\x00"

// tailBytes is how much of an invocation's log X-Amz-Log-Type: Tail returns, as Lambda does.
const tailBytes = 4096

// logCapture collects one invocation's log lines for X-Amz-Log-Result.
type logCapture struct {
	mu   sync.Mutex
	buf  []byte
	done chan struct{}
	once sync.Once
}

func newCapture() *logCapture { return &logCapture{done: make(chan struct{})} }

func (c *logCapture) add(line []byte) {
	c.mu.Lock()
	c.buf = append(c.buf, line...)
	if len(c.buf) > 2*tailBytes {
		c.buf = append(c.buf[:0], c.buf[len(c.buf)-tailBytes:]...)
	}
	c.mu.Unlock()
}

func (c *logCapture) finish() { c.once.Do(func() { close(c.done) }) }

// tail returns the last tailBytes of the log.
func (c *logCapture) tail() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.buf) > tailBytes {
		return append([]byte(nil), c.buf[len(c.buf)-tailBytes:]...)
	}
	return append([]byte(nil), c.buf...)
}

// procLog is the agent's end of one worker's stdout pipe.
type procLog struct {
	mu       sync.Mutex
	w        *os.File // nil once closed
	captures map[string]*logCapture
	current  atomic.Pointer[string] // the request id the stdout pipe is in, for the stderr pipe's records
}

func (pl *procLog) currentID() string {
	if pl == nil {
		return ""
	}
	if id := pl.current.Load(); id != nil {
		return *id
	}
	return ""
}

// emit writes lines into the pipe in one write; false if the pipe is closed.
func (pl *procLog) emit(capture *logCapture, id string, lines ...string) bool {
	n := 0
	for _, l := range lines {
		n += len(agentMark) + len(l) + 1
	}
	b := make([]byte, 0, n)
	for _, l := range lines {
		b = append(b, agentMark...)
		b = append(b, l...)
		b = append(b, '\n')
	}
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if pl.w == nil {
		return false
	}
	if capture != nil {
		if pl.captures == nil {
			pl.captures = map[string]*logCapture{}
		}
		pl.captures[id] = capture
	}
	_, err := pl.w.Write(b)
	return err == nil
}

func (pl *procLog) take(id string) *logCapture {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	c := pl.captures[id]
	delete(pl.captures, id)
	return c
}

func (pl *procLog) close() {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if pl.w != nil {
		_ = pl.w.Close()
		pl.w = nil
	}
}

// pipe copies r to w one line at a time until r ends, writing the agent's marked lines in place. A
// line longer than the buffer is written in pieces rather than held back. ids, when pl is nil, is the
// worker's stdout pipe, whose current request id the shipped records of this pipe carry.
//
// Lines that came in together leave in one write (a lineBatch): a no-op invocation's START, END and REPORT
// were three writes to the agent's stdout, now one or two.
func (l *logger) pipe(r *os.File, w io.Writer, pl *procLog, ids *procLog) {
	defer r.Close()
	stream := "stderr"
	if pl != nil {
		ids, stream = pl, "stdout"
	}
	br := bufio.NewReaderSize(r, 64*1024)
	out := newLineBatch(l, w)
	var current *logCapture // the invocation whose log is being captured
	finish := func() {
		out.flush() // what the caller's log tail holds is out first
		current.finish()
		current = nil
	}
	defer func() {
		out.flush()
		if current != nil {
			current.finish()
		}
	}()
	mark := []byte(agentMark)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			if err == io.EOF && line[len(line)-1] != '\n' {
				line = append(line[:len(line):len(line)], '\n')
			}
			own := -1
			if pl != nil {
				own = bytes.Index(line, mark)
			}
			f := l.logFormat()
			app := line // the runtime's part of the line
			if own >= 0 {
				app = line[:own]
			}
			if len(app) > 0 && f.JSON && !f.keepApp(app) {
				app = nil // under applicationLogLevel
			}
			var text []byte // the agent's line, as the pipe carries it
			var rendered [][]byte
			if own >= 0 {
				text = line[own+len(mark):]
				if f.JSON {
					rendered = f.render(text, time.Now())
				}
			}
			if own < 0 {
				if app != nil {
					out.add(app, false)
				}
			} else {
				if len(app) > 0 { // the runtime's unfinished line, ended here
					out.add(app, true)
				}
				if !f.JSON {
					out.add(text, false)
				}
				for _, o := range rendered {
					out.add(o, true)
				}
			}
			if l.ship != nil {
				l.shipPiped(stream, ids, pl != nil, app, text, rendered, f.JSON)
			}
			if own < 0 {
				if current != nil && app != nil {
					current.add(app)
				}
			} else {
				if len(app) > 0 && current != nil {
					current.add(append(app[:len(app):len(app)], '\n'))
				}
				if rest, ok := bytes.CutPrefix(text, []byte("START RequestId: ")); ok {
					if current != nil {
						finish()
					}
					id, _, _ := bytes.Cut(rest, []byte(" "))
					current = pl.take(string(id))
				}
				if current != nil {
					if f.JSON {
						for _, o := range rendered {
							current.add(append(o, '\n'))
						}
					} else {
						current.add(text)
					}
					if bytes.HasPrefix(text, []byte("REPORT ")) {
						finish()
					}
				}
			}
		}
		if br.Buffered() == 0 || out.full() {
			out.flush() // before waiting for more: a line is never held back
		}
		if err != nil && err != bufio.ErrBufferFull {
			return
		}
	}
}

// lineBatch gathers the lines pipe writes until it has read all that was there, then writes them at once
// (under the logger's lock, so that two pipes' lines never interleave within a line). Each line still reaches
// the telemetry tee on its own, as one record.
type lineBatch struct {
	l   *logger
	dst io.Writer // the tee's destination, or w itself
	tee *lineTee  // nil when w is not a tee
	buf []byte
}

func newLineBatch(l *logger, w io.Writer) *lineBatch {
	b := &lineBatch{l: l, dst: w}
	if tee, ok := w.(*lineTee); ok {
		b.dst, b.tee = tee.w, tee
	}
	return b
}

// add appends line (ended by a newline already, or given one when newline is set).
func (b *lineBatch) add(line []byte, newline bool) {
	start := len(b.buf)
	b.buf = append(b.buf, line...)
	if newline {
		b.buf = append(b.buf, '\n')
	}
	if b.tee != nil {
		b.tee.record(b.buf[start:])
	}
}

func (b *lineBatch) full() bool { return len(b.buf) >= 64*1024 }

func (b *lineBatch) flush() {
	if len(b.buf) == 0 {
		return
	}
	b.l.mu.Lock()
	_, _ = b.dst.Write(b.buf)
	b.l.mu.Unlock()
	b.buf = b.buf[:0]
}

// logFormat is the LoggingConfig in force (logformat.go); Text until one is set.
func (l *logger) logFormat() *logFormat {
	if f := l.format.Load(); f != nil {
		return f
	}
	return textFormat
}

func (l *logger) line(s string) {
	l.direct(nil, false, s)
}

func startLine(id, version string) string {
	return "START RequestId: " + id + " Version: " + version
}

type reportInfo struct {
	status   string // "", "timeout", "error"
	errType  string
	memoryMB int
	maxMemMB int
	initDur  time.Duration
	subst    string // Config.RuntimeSubst
}

// direct writes lines straight to stdout, for invocations answered without a worker; capture, if
// any, gets them too and is finished when end is set.
func (l *logger) direct(capture *logCapture, end bool, lines ...string) {
	f := l.logFormat()
	var b strings.Builder
	var out [][]byte
	now := time.Now()
	for _, s := range lines {
		if !f.JSON {
			out = append(out, []byte(s))
		} else {
			out = append(out, f.render([]byte(s), now)...)
		}
	}
	for _, o := range out {
		b.Write(o)
		b.WriteByte('\n')
	}
	l.mu.Lock()
	_, _ = io.WriteString(l.stdout, b.String())
	l.mu.Unlock()
	if l.ship != nil {
		id := ""
		for _, s := range lines {
			if id = requestIDOf([]byte(s)); id != "" {
				break
			}
		}
		for _, o := range out {
			l.ship.ship("stdout", id, o)
		}
	}
	if capture != nil {
		capture.add([]byte(b.String()))
		if end {
			capture.finish()
		}
	}
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
	if ri.subst != "" {
		b.WriteString("Runtime Substitute: ")
		b.WriteString(ri.subst)
		b.WriteString("\t")
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
