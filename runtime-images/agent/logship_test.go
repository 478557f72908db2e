package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// pop takes the oldest record from the buffer, as the one message it would be alone.
func pop(s *shipper) outRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.buf.entries[0]
	s.buf.entries = s.buf.entries[1:]
	rid := e.id
	if rid == "" {
		rid = noRequestID
	}
	return outRecord{e.ident.subject + subjectToken(rid), s.buf.data[e.start:e.end]}
}

// A batch goes out as one message per run of one function's records, whichever requests they belong to:
// newline-separated records, in order; one request's alone on its subject, several requests' on .batch.
func TestBatchMessagesGroupAFunctionsRecords(t *testing.T) {
	s, _ := newShipper("nats://127.0.0.1:1", "ns", "fn", "$LATEST", "p", 1000)
	for _, r := range [][2]string{{"", "init"}, {"r1", "START"}, {"r1", "hello"}, {"r1", "REPORT"}, {"r2", "START"}, {"", "after"}} {
		s.ship("stdout", r[0], []byte(r[1]))
	}
	var got []string
	var lasts []bool
	s.take().messages(func(subject string, payload []byte, records int, last bool) bool {
		lasts = append(lasts, last)
		var msgs []string
		for _, line := range strings.Split(string(payload), "\n") {
			var rec logRecord
			if err := json.Unmarshal([]byte(line), &rec); err != nil {
				t.Fatalf("%q: %v", line, err)
			}
			msgs = append(msgs, rec.Message)
		}
		if len(msgs) != records {
			t.Errorf("%s: %d records, said %d", subject, len(msgs), records)
		}
		got = append(got, subject[strings.LastIndex(subject, ".")+1:]+":"+strings.Join(msgs, ","))
		return true
	})
	want := []string{"batch:init,START,hello,REPORT,START,after"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("got %v want %v", got, want)
	}
	if fmt.Sprint(lasts) != "[true]" { // only the batch's last message asks for an acknowledgement
		t.Errorf("last flags %v", lasts)
	}
	// One request's records alone keep its subject; another function's records start another message.
	s.ship("stdout", "r1", []byte("START"))
	s.ship("stdout", "r1", []byte("REPORT"))
	s.setFunction("ns", "other")
	s.ship("stdout", "", []byte("init"))
	got, lasts = nil, nil
	s.take().messages(func(subject string, _ []byte, records int, last bool) bool {
		lasts = append(lasts, last)
		got = append(got, fmt.Sprintf("%s:%d", strings.TrimPrefix(subject, "kubelambda.logs.ns."), records))
		return true
	})
	if fmt.Sprint(got) != "[fn.r1:2 other.none:1]" || fmt.Sprint(lasts) != "[true true]" {
		t.Errorf("got %v, last flags %v", got, lasts)
	}
	s.setFunction("ns", "fn")
	// A long run is cut at logMessageRecords records.
	for i := range logMessageRecords + 3 {
		s.ship("stdout", "r3", []byte(fmt.Sprint(i)))
	}
	var sizes []int
	s.take().messages(func(_ string, _ []byte, records int, _ bool) bool { sizes = append(sizes, records); return true })
	if fmt.Sprint(sizes) != fmt.Sprint([]int{logMessageRecords, 3}) {
		t.Errorf("sizes %v", sizes)
	}
}

func TestShipQueueFullIsCounted(t *testing.T) {
	s, err := newShipper("nats://127.0.0.1:1", "ns", "fn", "$LATEST", "pod-1", 2)
	if err != nil {
		t.Fatal(err)
	}
	// The sender is not started: the buffer holds 2 records, the next 3 are dropped and counted.
	for i := range 5 {
		s.ship("stdout", "r1", []byte(fmt.Sprintf("line %d\n", i)))
	}
	if q, d := s.queued.Load(), s.dropped.Load(); q != 2 || d != 3 {
		t.Fatalf("queued %d dropped %d, want 2 and 3", q, d)
	}
	r := pop(s)
	if r.subject != "kubelambda.logs.ns.fn.r1" {
		t.Errorf("subject %q", r.subject)
	}
	var rec logRecord
	if err := json.Unmarshal(r.payload, &rec); err != nil {
		t.Fatal(err)
	}
	if rec.Message != "line 0" || rec.RequestID != "r1" || rec.Pod != "pod-1" || rec.Namespace != "ns" || rec.Function != "fn" {
		t.Errorf("record %+v", rec)
	}
}

func TestShipSubjectOutsideInvocationAndSpecialised(t *testing.T) {
	s, _ := newShipper("nats://127.0.0.1:1", "", "function", "$LATEST", "p", 4)
	s.ship("stdout", "", []byte("warm-pool pod started")) // no namespace yet: not shipped, not a drop
	if q, d := s.queued.Load(), s.dropped.Load(); q != 0 || d != 0 {
		t.Fatalf("queued %d dropped %d before /specialize", q, d)
	}
	s.setFunction("team-a", "hello.v2")
	s.ship("stderr", "", []byte("x"))
	if got := (pop(s)).subject; got != "kubelambda.logs.team-a.hello_v2.none" {
		t.Errorf("got %q", got)
	}
}

func TestShipperNilIsOff(t *testing.T) {
	var s *shipper
	s.ship("stdout", "r", []byte("x"))
	s.setFunction("a", "b")
	s.close(time.Millisecond)
	if s, err := newShipper("", "ns", "fn", "v", "p", 1); s != nil || err != nil {
		t.Fatal("an empty URL turns shipping off")
	}
	if _, err := newShipper("http://x:1", "ns", "fn", "v", "p", 1); err == nil || !strings.Contains(err.Error(), "KUBELAMBDA_LOG_NATS_URL") {
		t.Fatalf("a bad URL names the variable: %v", err)
	}
}

func TestRequestIDOf(t *testing.T) {
	for line, want := range map[string]string{
		"START RequestId: abc Version: $LATEST": "abc",
		"END RequestId: abc":                    "abc",
		"REPORT RequestId: abc\tDuration: 1 ms": "abc",
		"hello":                                 "",
	} {
		if got := requestIDOf([]byte(line)); got != want {
			t.Errorf("%q: got %q want %q", line, got, want)
		}
	}
}

// Lines of the worker's stdout and stderr pipes carry the request id between START and REPORT.
func TestShipPipedAttribution(t *testing.T) {
	s, _ := newShipper("nats://127.0.0.1:1", "ns", "fn", "$LATEST", "p", 16)
	l := &logger{ship: s}
	pl := &procLog{}
	app := func(s string) []byte { return []byte(s + "\n") }
	l.shipPiped("stdout", pl, true, app("init"), nil, nil, false)
	l.shipPiped("stdout", pl, true, nil, app("START RequestId: r9 Version: $LATEST"), nil, false)
	l.shipPiped("stdout", pl, true, app("hello"), nil, nil, false)
	l.shipPiped("stderr", pl, false, app("warning"), nil, nil, false)
	l.shipPiped("stdout", pl, true, []byte("partial"), app("END RequestId: r9"), nil, false)
	l.shipPiped("stdout", pl, true, nil, app("REPORT RequestId: r9\tDuration: 1.00 ms"), nil, false)
	l.shipPiped("stdout", pl, true, app("after"), nil, nil, false)
	want := []string{"none:init", "r9:START RequestId: r9 Version: $LATEST", "r9:hello", "r9:warning", "r9:partial",
		"r9:END RequestId: r9", "r9:REPORT RequestId: r9\tDuration: 1.00 ms", "none:after"}
	for _, w := range want {
		r := pop(s)
		var rec logRecord
		_ = json.Unmarshal(r.payload, &rec)
		got := r.subject[strings.LastIndex(r.subject, ".")+1:] + ":" + rec.Message
		if got != w {
			t.Errorf("got %q want %q", got, w)
		}
	}
}

// natsServer starts a real nats-server with JetStream (NATS_SERVER: its binary; `make agent-test` passes the
// venv's) and returns its port.
func natsServer(t testing.TB) int {
	t.Helper()
	bin := os.Getenv("NATS_SERVER")
	if bin == "" {
		t.Fatal("NATS_SERVER is not set: the path of a nats-server binary (`make agent-test` sets it)")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	srv := exec.Command(bin, "-a", "127.0.0.1", "-p", fmt.Sprint(port), "-js", "-sd", t.TempDir())
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Process.Kill(); _ = srv.Wait() })
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			conn.Close()
			return port
		}
		if time.Now().After(deadline) {
			t.Fatalf("nats-server did not listen on %d: %v", port, err)
		}
	}
}

// waitShipped waits (20 s at most) until stored + dropped reach n.
func waitShipped(s *shipper, n uint64) {
	deadline := time.Now().Add(20 * time.Second)
	for s.dropped.Load()+s.stored.Load() < n && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
}

// Records published where no JetStream stream takes them are refused (503, no responders) and counted as dropped.
func TestShipToNatsWithoutStreamCountsDrops(t *testing.T) {
	port := natsServer(t)
	s, _ := newShipper(fmt.Sprintf("nats://127.0.0.1:%d", port), "ns", "fn", "$LATEST", "p", 16)
	s.start()
	for i := range 3 {
		s.ship("stdout", "r1", []byte(fmt.Sprintf("line %d", i)))
	}
	waitShipped(s, 3)
	if d, st := s.dropped.Load(), s.stored.Load(); d != 3 || st != 0 {
		e := s.lastError.Load()
		t.Fatalf("dropped %d stored %d, want 3 and 0 (last error %v)", d, st, e)
	}
	if e := s.lastError.Load(); e == nil || !strings.Contains(*e, "503") {
		t.Errorf("last error %v, want the 503 of no stream", e)
	}
	s.close(time.Second)
}

// jsRequest sends one JetStream API request over a raw connection and returns the answer's body.
func jsRequest(t testing.TB, port int, subject, body string) string {
	t.Helper()
	conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "CONNECT {\"verbose\":false}\r\nSUB _INBOX.t 1\r\nPUB %s _INBOX.t %d\r\n%s\r\n", subject, len(body), body)
	br := bufio.NewReader(conn)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("%s: %v", subject, err)
		}
		if strings.HasPrefix(line, "MSG ") {
			answer, _ := br.ReadString('\n')
			return answer
		}
	}
}

// Several requests' records sent in one batch (one acknowledgement) are all stored and counted as stored, in one
// message on the function's .batch subject.
func TestShipBatchIsStoredWithOneAcknowledgement(t *testing.T) {
	port := natsServer(t)
	jsRequest(t, port, "$JS.API.STREAM.CREATE.L", `{"name":"L","subjects":["kubelambda.logs.>"],"storage":"memory"}`)
	s, _ := newShipper(fmt.Sprintf("nats://127.0.0.1:%d", port), "ns", "fn", "$LATEST", "p", 100)
	s.start()
	for r := range 5 {
		for i := range 4 {
			s.ship("stdout", fmt.Sprintf("r%d", r), []byte(fmt.Sprintf("line %d", i)))
		}
	}
	waitShipped(s, 20)
	if d, st := s.dropped.Load(), s.stored.Load(); d != 0 || st != 20 {
		t.Fatalf("dropped %d stored %d, want 0 and 20 (last error %v)", d, st, s.lastError.Load())
	}
	info := jsRequest(t, port, "$JS.API.STREAM.INFO.L", `{"subjects_filter":">"}`)
	var got struct {
		State struct {
			Messages uint64            `json:"messages"`
			Subjects map[string]uint64 `json:"subjects"`
		} `json:"state"`
	}
	if err := json.Unmarshal([]byte(info), &got); err != nil {
		t.Fatalf("%v: %s", err, info)
	}
	if got.State.Messages < 1 || got.State.Messages > 5 || got.State.Subjects["kubelambda.logs.ns.fn.batch"] < 1 {
		t.Errorf("stream state %s, want the requests' records in few messages on .batch", info)
	}
	s.close(time.Second)
}

// The hand-written encoding reads back as encoding/json reads it: quotes, control characters, invalid UTF-8.
func TestShipRecordEncoding(t *testing.T) {
	s, _ := newShipper("nats://127.0.0.1:1", `n"s`, "fn\\x", "$LATEST", "pod\n1", 16)
	for _, msg := range []string{"plain", `say "hi" \ bye`, "tab\there\x01\x1f", "héllo ✓ \u2028", "bad \xff\xfe utf8", ""} {
		s.ship("stderr", "r\"1", []byte(msg+"\n"))
		r := pop(s)
		var rec logRecord
		if err := json.Unmarshal(r.payload, &rec); err != nil {
			t.Fatalf("%q: %v in %s", msg, err, r.payload)
		}
		want := strings.ToValidUTF8(msg, "\uFFFD")
		if msg == "bad \xff\xfe utf8" {
			want = "bad \uFFFD\uFFFD utf8"
		}
		if rec.Message != want || rec.Namespace != `n"s` || rec.Function != "fn\\x" || rec.Pod != "pod\n1" ||
			rec.RequestID != "r\"1" || rec.Stream != "stderr" || rec.Version != "$LATEST" || rec.Truncated {
			t.Errorf("%q: got %+v", msg, rec)
		}
		if _, err := time.Parse(time.RFC3339Nano, rec.Time); err != nil {
			t.Errorf("time %q: %v", rec.Time, err)
		}
	}
	long := strings.Repeat("x", maxLogMessage+10)
	s.ship("stdout", "", []byte(long))
	var rec logRecord
	_ = json.Unmarshal((pop(s)).payload, &rec)
	if len(rec.Message) != maxLogMessage || !rec.Truncated || rec.RequestID != "" {
		t.Errorf("long line: %d bytes, truncated %v", len(rec.Message), rec.Truncated)
	}
}

func BenchmarkShip(b *testing.B) {
	s, _ := newShipper("nats://127.0.0.1:1", "ns", "fn", "$LATEST", "pod-1", 1)
	line := []byte("line 1 of a burst, padded to about one hundred bytes like a typical log line.........\n")
	for b.Loop() {
		s.ship("stdout", "6f1c1a52-0d6a-4c8e-9f55-3f0e2f1d7b11", line)
		if len(s.buf.entries) > 4096 {
			s.recycle(s.take())
		}
	}
}

// One invocation's shipping as the agent does it at a few thousand invocations a second: its four records
// encoded, and its share of a batch (32 invocations) grouped into PUB commands, written to a buffered writer.
func BenchmarkShipInvocation(b *testing.B) {
	s, _ := newShipper("nats://127.0.0.1:1", "ns", "fn", "$LATEST", "pod-1", 1<<20)
	w := bufio.NewWriterSize(io.Discard, 64*1024)
	id := "6f1c1a52-0d6a-4c8e-9f55-3f0e2f1d7b11"
	lines := [][]byte{
		[]byte("START RequestId: " + id + " Version: $LATEST"),
		[]byte("line 1 of a handler, padded to about one hundred bytes like a typical log line............"),
		[]byte("END RequestId: " + id),
		[]byte("REPORT RequestId: " + id + "\tDuration: 0.21 ms\tBilled Duration: 1 ms\tMemory Size: 128 MB\tMax Memory Used: 20 MB"),
	}
	var size [20]byte
	n := 0
	for b.Loop() {
		for _, l := range lines {
			s.ship("stdout", id, l)
		}
		if n++; n%32 == 0 {
			batch := s.take()
			batch.messages(func(subject string, payload []byte, _ int, _ bool) bool {
				_, _ = w.WriteString("PUB ")
				_, _ = w.WriteString(subject)
				_, _ = w.Write(strconv.AppendInt(size[:0], int64(len(payload)), 10))
				_, _ = w.Write(payload)
				return true
			})
			_ = w.Flush()
			s.recycle(batch)
		}
	}
}

// Only a sleeping sender is woken, once: records that come while it is busy cost no wake-up.
func TestShipWakesOnlyAnIdleSender(t *testing.T) {
	s, _ := newShipper("nats://127.0.0.1:1", "ns", "fn", "$LATEST", "p", 16)
	<-s.wake // setFunction's
	s.ship("stdout", "r1", []byte("busy"))
	if len(s.wake) != 0 {
		t.Fatal("a busy sender was woken")
	}
	s.idle.Store(true)
	for i := range 3 {
		s.ship("stdout", "r1", []byte(fmt.Sprintf("line %d", i)))
	}
	if len(s.wake) != 1 || s.idle.Load() {
		t.Fatalf("wake-ups %d, idle %v: want one wake-up and the sender no longer idle", len(s.wake), s.idle.Load())
	}
	// A burst wakes a busy sender once its batch is full, before the linger is over.
	<-s.wake
	b, _ := newShipper("nats://127.0.0.1:1", "ns", "fn", "$LATEST", "p", 2*logEarlySend)
	<-b.wake
	for i := range logEarlySend {
		if len(b.wake) != 0 {
			t.Fatalf("woken at record %d, want at %d", i, logEarlySend)
		}
		b.ship("stdout", "r1", []byte("burst"))
	}
	if len(b.wake) != 1 {
		t.Fatalf("not woken by a full batch of %d records", logEarlySend)
	}
}

// The server's answers are handled as they come, in pieces: an acknowledgement split between two reads is settled
// once whole, a PING answered.
func TestHandleAcknowledgementsInPieces(t *testing.T) {
	s, _ := newShipper("nats://127.0.0.1:1", "ns", "fn", "$LATEST", "p", 16)
	var out bytes.Buffer
	c := &natsConn{w: bufio.NewWriter(&out)}
	var settled []string
	settle := func(key uint64, ok bool) { settled = append(settled, fmt.Sprintf("%d:%v", key, ok)) }
	ack := `{"stream":"L","seq":7}`
	whole := "PING\r\nMSG _INBOX.ns.x.3 1 " + strconv.Itoa(len(ack)) + "\r\n" + ack + "\r\n" +
		"HMSG _INBOX.ns.x.4 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n"
	for cut := 1; cut < len(whole); cut++ {
		settled, c.in = nil, nil
		out.Reset()
		c.w.Reset(&out)
		for _, part := range []string{whole[:cut], whole[cut:]} {
			c.in = append(c.in, part...)
			if err := s.handle(c, "_INBOX.ns.x.", settle); err != nil {
				t.Fatalf("cut %d: %v", cut, err)
			}
		}
		_ = c.w.Flush()
		if strings.Join(settled, " ") != "3:true 4:false" || out.String() != "PONG\r\n" || len(c.in) != 0 {
			t.Fatalf("cut %d: settled %v, wrote %q, left %q", cut, settled, out.String(), c.in)
		}
	}
}

// A login is renewed before the server would expire it: the old connection's batches are acknowledged before the
// new connection sends, so nothing counts as dropped across renewals.
func TestShipRenewsItsLoginWithoutDrops(t *testing.T) {
	port := natsServer(t)
	jsRequest(t, port, "$JS.API.STREAM.CREATE.L", `{"name":"L","subjects":["kubelambda.logs.>"],"storage":"memory"}`)
	s, _ := newShipper(fmt.Sprintf("nats://127.0.0.1:%d", port), "ns", "fn", "$LATEST", "p", 8192)
	s.renew = 200 * time.Millisecond
	s.start()
	n := 0
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); n++ {
		s.ship("stdout", fmt.Sprintf("r%d", n/4), []byte(fmt.Sprintf("line %d", n)))
		time.Sleep(200 * time.Microsecond)
	}
	waitShipped(s, uint64(n))
	if d, st, c := s.dropped.Load(), s.stored.Load(), s.connections.Load(); d != 0 || st != uint64(n) || c < 3 {
		t.Fatalf("dropped %d stored %d connections %d, want 0, %d and at least 3 (last error %v)", d, st, c, n, s.lastError.Load())
	}
	s.close(time.Second)
}

// cpuSeconds is the user + system CPU time of process pid (0: this one, from getrusage to the microsecond) so
// far, from /proc.
func cpuSeconds(b *testing.B, pid int) float64 {
	if pid == 0 {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			b.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
	}
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	f := strings.Fields(string(raw[bytes.LastIndexByte(raw, ')')+2:]))
	utime, _ := strconv.Atoi(f[11])
	stime, _ := strconv.Atoi(f[12])
	return float64(utime+stime) / 100 // USER_HZ: 100 on Linux
}

// What shipping costs in CPU per invocation, apart from the runtime and the HTTP path that dwarf it in
// bench/logs_bench.py: one invocation's four records shipped (START, a line, END, REPORT) at about 1,300
// invocations a second (13 every 10 ms, the warm bench's rate), with the sender publishing to a real nats-server
// and reading its acknowledgements, beside the same loop with shipping off. Reported: this process's CPU (the
// agent's shipping) and nats-server's, µs per invocation, from /proc; run with -benchtime=3000x or more.
func BenchmarkShipCPUPerInvocation(b *testing.B) {
	bin := os.Getenv("NATS_SERVER")
	for _, on := range []bool{false, true} {
		name := map[bool]string{false: "off", true: "on"}[on]
		b.Run(name, func(b *testing.B) {
			port := natsServer(b)
			jsRequest(b, port, "$JS.API.STREAM.CREATE.L", `{"name":"L","subjects":["kubelambda.logs.>"],"storage":"file"}`)
			natsPid := natsPidOn(b, bin, port)
			var s *shipper
			if on {
				s, _ = newShipper(fmt.Sprintf("nats://127.0.0.1:%d", port), "ns", "fn", "$LATEST", "pod-1", 1<<16)
				s.start()
				defer s.close(5 * time.Second)
			}
			lines := make([][]byte, 4)
			selfBefore, natsBefore := cpuSeconds(b, 0), cpuSeconds(b, natsPid)
			n := 0
			for b.Loop() {
				id := fmt.Sprintf("6f1c1a52-0d6a-4c8e-9f55-%012d", n)
				lines[0] = []byte("START RequestId: " + id + " Version: $LATEST")
				lines[1] = []byte("line 1 of a handler, padded to about one hundred bytes like a typical log line............")
				lines[2] = []byte("END RequestId: " + id)
				lines[3] = []byte("REPORT RequestId: " + id + "\tDuration: 0.21 ms\tBilled Duration: 1 ms\tMemory Size: 128 MB")
				for _, l := range lines {
					s.ship("stdout", id, l)
				}
				if n++; n%13 == 0 {
					time.Sleep(10 * time.Millisecond)
				}
			}
			if on {
				waitShipped(s, uint64(4*n))
				if d := s.dropped.Load(); d != 0 {
					b.Fatalf("%d records dropped", d)
				}
			}
			b.ReportMetric((cpuSeconds(b, 0)-selfBefore)*1e6/float64(n), "agent-cpu-µs/inv")
			b.ReportMetric((cpuSeconds(b, natsPid)-natsBefore)*1e6/float64(n), "nats-cpu-µs/inv")
		})
	}
}

// natsPidOn is the pid of the nats-server (bin) listening on port, from /proc.
func natsPidOn(b *testing.B, bin string, port int) int {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if bytes.HasPrefix(cmd, []byte(bin)) && bytes.Contains(cmd, []byte("\x00"+strconv.Itoa(port)+"\x00")) {
			return pid
		}
	}
	b.Fatalf("no nats-server on port %d", port)
	return 0
}
