package main

// Log shipping (docs/logs.md): every line the agent writes to the pod's log (the runtime's output, the
// agent's START / END / REPORT lines) is also published, as one JSON record, to the platform's NATS
// JetStream, where a stream per namespace keeps it past the pod's life. Shipping never blocks the
// invocation and stays off its path: a line is encoded straight into a bounded buffer (no allocation, one
// uncontended lock, no channel send); the sender goroutine ticks every 50 ms while there is work (sooner for a burst), swaps the
// buffer, publishes it (a function's consecutive records as one message of newline-separated JSON records) and
// reads the store's acknowledgements without blocking, and sleeps otherwise (a record to an empty buffer wakes
// it), so that neither the agent nor NATS pays per line or per invocation. A record that
// finds the buffer full, or that the store refuses or never acknowledges, is counted in
// kubelambda_agent_log_records_dropped_total, never lost silently.
//
// The agent speaks the NATS client protocol itself (CONNECT, PUB with a reply subject, SUB, PING/PONG:
// https://docs.nats.io/reference/reference-protocols/nats-protocol) so that it stays a static binary
// without dependencies; JetStream answers each published message on the reply subject with
// {"stream":..,"seq":..} or {"error":..}, and with a 503 status when no stream takes the subject.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"
)

const (
	logSubjectPrefix  = "kubelambda.logs"
	defaultLogBuffer  = 8192                  // records waiting for the sender, at most
	maxLogBufferBytes = 16 << 20              // bytes of records waiting for the sender, at most
	maxLogMessage     = 64 * 1024             // a longer line is cut (the record says so)
	logMessageRecords = 256                   // records of one request in one NATS message, at most
	logMessageBytes   = 256 * 1024            // bytes of one NATS message, at most (NATS' default limit is 1 MiB)
	logLinger         = 50 * time.Millisecond // how long a batch waits for more records before it is sent
	logEarlySend      = 1024                  // records that make a batch go before its linger is over
	logDialTimeout    = 2 * time.Second       // connecting to NATS
	logAckTimeout     = 10 * time.Second      // a record not acknowledged by then counts as dropped
	logRetryMax       = 5 * time.Second       // the longest wait between connection attempts
	logShutdownFlush  = 2 * time.Second       // how long SIGTERM waits for queued records to be stored
	defaultLogRenew   = 23 * time.Hour        // a login is renewed after this, before its user JWT (a day) expires
	noRequestID       = "none"                // subject token of lines outside any invocation
	batchSubjectToken = "batch"               // subject token of a message with several requests' records
	logInboxTokenSize = 12
)

// logRecord is what the store keeps for one line (field names are the log store's schema, docs/logs.md).
type logRecord struct {
	Time      string `json:"time"`
	Namespace string `json:"namespace"`
	Function  string `json:"function"`
	Version   string `json:"version"`
	RequestID string `json:"requestId,omitempty"`
	Pod       string `json:"pod"`
	Stream    string `json:"stream"` // stdout or stderr
	Message   string `json:"message"`
	Truncated bool   `json:"truncated,omitempty"`
}

// logBatch is the buffer records are encoded into: their bytes, each followed by a newline, and where each is.
type logBatch struct {
	data    []byte
	entries []logEntry
}

type logEntry struct {
	ident      *identity
	id         string // request id; "" outside an invocation
	start, end int    // the record in data, without its newline
}

// outRecord is one NATS message: a subject and newline-separated records.
type outRecord struct {
	subject string
	payload []byte
}

// shipper owns the queue and the connection to NATS.
type shipper struct {
	cmu     sync.Mutex // addr, user, pass: a warm-pool pod gets its namespace's credentials at /specialize
	addr    string     // host:port
	user    string     // logs.<namespace> (docs/logs.md, "Credentials")
	pass    string
	pod     string
	version string
	ident   atomic.Pointer[identity] // namespace, function (a warm-pool pod learns them at /specialize)

	mu      sync.Mutex
	buf     *logBatch     // records being added
	spare   *logBatch     // the sender's last batch, emptied, for the next swap
	limit   int           // records in buf, at most
	wake    chan struct{} // capacity 1: a record came while the sender slept (idle)
	idle    atomic.Bool   // the sender sleeps until woken: nothing buffered, nothing awaiting acknowledgement
	renew   time.Duration // a connection's age at which it is replaced by a new login (0: never)
	done    chan struct{}
	stopped chan struct{}

	queued      atomic.Uint64 // accepted into the queue
	stored      atomic.Uint64 // acknowledged by JetStream
	dropped     atomic.Uint64 // queue full, refused, unacknowledged or lost with a connection
	inflight    atomic.Int64  // published, not yet acknowledged
	connections atomic.Uint64 // logins to the log store (a renewal is one)
	lastError   atomic.Pointer[string]
	now         func() time.Time
}

// newShipper returns nil when rawURL is empty (shipping off).
func newShipper(rawURL, namespace, function, version, pod string, buffer int) (*shipper, error) {
	if rawURL == "" {
		return nil, nil
	}
	if buffer <= 0 {
		buffer = defaultLogBuffer
	}
	s := &shipper{
		pod: pod, version: version,
		buf: &logBatch{}, spare: &logBatch{}, limit: buffer,
		wake: make(chan struct{}, 1), done: make(chan struct{}), stopped: make(chan struct{}),
		renew: defaultLogRenew, now: time.Now,
	}
	if err := s.setURL(rawURL); err != nil {
		return nil, err
	}
	s.setFunction(namespace, function)
	return s, nil
}

// setURL sets where to ship and as whom (nats://user:password@host:port); the next connection uses it.
func (s *shipper) setURL(rawURL string) error {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "nats" || u.Host == "" {
		return fmt.Errorf("invalid log store URL (KUBELAMBDA_LOG_NATS_URL) %q: want nats://host:port", redactURL(rawURL))
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "4222")
	}
	s.cmu.Lock()
	defer s.cmu.Unlock()
	s.addr, s.user, s.pass = host, "", ""
	if u.User != nil {
		s.user = u.User.Username()
		s.pass, _ = u.User.Password()
	}
	return nil
}

// redactURL is rawURL without its password, for messages.
func redactURL(rawURL string) string {
	if u, err := url.Parse(rawURL); err == nil && u.User != nil {
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), "***")
			return u.String()
		}
	}
	return rawURL
}

// inboxPrefix is where the store's acknowledgements come: a namespace's log user may subscribe only under
// _INBOX.<namespace>.
func inboxPrefix(user string) string {
	if ns, ok := strings.CutPrefix(user, "logs."); ok && ns != "" {
		return "_INBOX." + ns + "." + randomToken() + "."
	}
	return "_INBOX." + randomToken() + "."
}

// identity is what every record of the pod shares, encoded once: the subject's prefix and the record's fields.
type identity struct {
	off     bool   // no namespace yet (a warm-pool pod before /specialize): its lines belong to no function
	subject string // kubelambda.logs.<namespace>.<function>.
	fields  []byte // "namespace":..,"function":..,"version":..,"pod":..,
}

func (s *shipper) setFunction(namespace, function string) {
	if s == nil {
		return
	}
	f := []byte(`"namespace":`)
	f = appendJSONString(f, namespace)
	f = append(f, `,"function":`...)
	f = appendJSONString(f, function)
	f = append(f, `,"version":`...)
	f = appendJSONString(f, s.version)
	f = append(f, `,"pod":`...)
	f = appendJSONString(f, s.pod)
	f = append(f, ',')
	s.ident.Store(&identity{
		off:     namespace == "",
		subject: logSubjectPrefix + "." + subjectToken(namespace) + "." + subjectToken(function) + ".",
		fields:  f,
	})
	select { // a warm-pool pod's sender waits for its namespace before it connects
	case s.wake <- struct{}{}:
	default:
	}
}

// subjectToken keeps a NATS subject token valid: no dots, spaces or wildcards.
func subjectToken(v string) string {
	if v == "" {
		return "_"
	}
	return strings.Map(func(r rune) rune {
		switch r {
		case '.', ' ', '\t', '*', '>', '\r', '\n':
			return '_'
		}
		return r
	}, v)
}

// ship adds one line to the buffer; it never blocks. id is the invocation's request id, "" outside one. The
// record is encoded by hand (the logRecord fields, in that order) straight into the buffer: it runs on the
// pipe's goroutine for every line.
func (s *shipper) ship(stream, id string, line []byte) {
	if s == nil {
		return
	}
	ident := s.ident.Load()
	if ident.off {
		return
	}
	line = bytes.TrimRight(line, "\r\n")
	truncated := len(line) > maxLogMessage
	if truncated {
		line = line[:maxLogMessage]
	}
	now := s.now()
	s.mu.Lock()
	b := s.buf
	if len(b.entries) >= s.limit || len(b.data)+len(line) > maxLogBufferBytes {
		s.mu.Unlock()
		s.dropped.Add(1)
		return
	}
	start := len(b.data)
	d := append(b.data, `{"time":"`...)
	d = now.UTC().AppendFormat(d, time.RFC3339Nano)
	d = append(d, `",`...)
	d = append(d, ident.fields...)
	if id != "" {
		d = append(d, `"requestId":`...)
		d = appendJSONString(d, id)
		d = append(d, ',')
	}
	d = append(d, `"stream":"`...)
	d = append(d, stream...)
	d = append(d, `","message":`...)
	d = appendJSONBytes(d, line)
	if truncated {
		d = append(d, `,"truncated":true`...)
	}
	d = append(d, '}')
	b.entries = append(b.entries, logEntry{ident: ident, id: id, start: start, end: len(d)})
	b.data = append(d, '\n')
	full := len(b.entries) == logEarlySend
	s.mu.Unlock()
	s.queued.Add(1)
	// Only a sleeping sender is woken (once), or a busy one when a burst filled a batch: otherwise it sends what
	// it finds at its next tick, so that a stream of invocations costs one sender wake-up per batch, not one per
	// record or per invocation.
	if (s.idle.Load() && s.idle.CompareAndSwap(true, false)) || full {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// take swaps the buffer for an empty one and returns what it held.
func (s *shipper) take() *logBatch {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.buf
	if s.spare == nil {
		s.spare = &logBatch{}
	}
	s.buf, s.spare = s.spare, nil
	return b
}

// recycle keeps a sent batch's memory for the next swap (unless a burst made it large).
func (s *shipper) recycle(b *logBatch) {
	if cap(b.data) > 1<<20 {
		b = &logBatch{}
	}
	clear(b.entries)
	b.data, b.entries = b.data[:0], b.entries[:0]
	s.mu.Lock()
	s.spare = b
	s.mu.Unlock()
}

// buffered is how many records wait for the sender.
func (s *shipper) buffered() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.buf.entries)
}

// messages groups a batch into NATS messages: consecutive records of one function (one pod identity) together,
// whichever requests they belong to, so that NATS stores one message per batch rather than one per invocation.
// A message of one request's records goes on that request's subject (<function>.<request id>, or .none); one
// with several requests' on <function>.batch, which a reader of one request id reads too, keeping its records
// (docs/logs.md). last is true for the last message of a run of one identity (one namespace's stream): the
// sender asks JetStream to acknowledge only those.
func (b *logBatch) messages(yield func(subject string, payload []byte, records int, last bool) bool) {
	for i := 0; i < len(b.entries); {
		e := b.entries[i]
		j, size, mixed := i+1, e.end-e.start, false
		for j < len(b.entries) && j-i < logMessageRecords {
			n := b.entries[j]
			if n.ident != e.ident || size+1+n.end-n.start > logMessageBytes {
				break
			}
			mixed = mixed || n.id != e.id
			size += 1 + n.end - n.start
			j++
		}
		rid := e.id
		switch {
		case mixed:
			rid = batchSubjectToken
		case rid == "":
			rid = noRequestID
		}
		last := j == len(b.entries) || b.entries[j].ident != e.ident
		if !yield(e.ident.subject+subjectToken(rid), b.data[e.start:b.entries[j-1].end], j-i, last) {
			return
		}
		i = j
	}
}

func appendJSONString(b []byte, v string) []byte { return appendJSONBytes(b, []byte(v)) }

// appendJSONBytes appends v as a JSON string: quotes, backslashes and control characters escaped, invalid UTF-8
// replaced by U+FFFD (as encoding/json does).
func appendJSONBytes(b []byte, v []byte) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(v); {
		c := v[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c < utf8.RuneSelf {
			b = append(b, v[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRune(v[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, v[start:i]...)
			b = append(b, `\ufffd`...)
			i++
			start = i
			continue
		}
		i += size
	}
	b = append(b, v[start:]...)
	return append(b, '"')
}

// requestIDOf returns X of an agent line "START|END|REPORT RequestId: X ...", else "".
func requestIDOf(line []byte) string {
	for _, p := range []string{"START RequestId: ", "END RequestId: ", "REPORT RequestId: "} {
		if rest, ok := bytes.CutPrefix(line, []byte(p)); ok {
			end := bytes.IndexAny(rest, " \t\r\n")
			if end < 0 {
				end = len(rest)
			}
			return string(rest[:end])
		}
	}
	return ""
}

func (s *shipper) start() {
	if s != nil {
		go s.run()
	}
}

// setRenew sets the age at which a connection's login is renewed (the next connection uses it).
func (s *shipper) setRenew(seconds int) {
	if s != nil && seconds > 0 {
		s.renew = time.Duration(seconds) * time.Second
	}
}

// close stops taking records and waits up to wait for the queued ones to be acknowledged.
func (s *shipper) close(wait time.Duration) {
	if s == nil {
		return
	}
	close(s.done)
	select {
	case <-s.stopped:
	case <-time.After(wait):
	}
}

func (s *shipper) fail(err error) {
	msg := err.Error()
	s.lastError.Store(&msg)
}

// run connects, sends and reconnects until close.
func (s *shipper) run() {
	defer close(s.stopped)
	// A warm-pool pod has nothing to ship, nor credentials, before /specialize names its namespace.
	for s.ident.Load().off {
		select {
		case <-s.done:
			return
		case <-s.wake:
		}
	}
	backoff := 100 * time.Millisecond
	for {
		finished, err := s.session()
		if finished {
			return
		}
		if errors.Is(err, errRenew) {
			backoff = 100 * time.Millisecond
			continue
		}
		if err != nil {
			s.fail(err)
		}
		select {
		case <-s.done:
			// Closing while disconnected: what is buffered cannot be stored.
			s.dropped.Add(uint64(len(s.take().entries)))
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, logRetryMax)
	}
}

// natsConn is one connection, used by the sender goroutine alone: it writes, and it reads what the server sent
// without waiting for it (poll), so that no reader goroutine is woken for each acknowledgement.
type natsConn struct {
	conn net.Conn
	raw  syscall.RawConn
	w    *bufio.Writer
	in   []byte // read, not yet handled
}

// errRenew ends a session whose login is due for renewal (logRenew); run connects again at once.
var errRenew = errors.New("renewing the log store login")

// poll reads what the server has sent so far without waiting: one read system call when nothing came.
func (c *natsConn) poll() error {
	for {
		if cap(c.in)-len(c.in) < 4096 {
			grown := make([]byte, len(c.in), 2*cap(c.in)+32*1024)
			copy(grown, c.in)
			c.in = grown
		}
		space := c.in[len(c.in):cap(c.in)]
		var n int
		var rerr error
		if err := c.raw.Read(func(fd uintptr) bool {
			n, rerr = syscall.Read(int(fd), space)
			return true // never wait for the poller: EAGAIN means nothing more came
		}); err != nil {
			return err
		}
		switch {
		case rerr == syscall.EAGAIN || rerr == syscall.EINTR:
			return nil
		case rerr != nil:
			return rerr
		case n == 0:
			return io.EOF
		}
		c.in = c.in[:len(c.in)+n]
		if n < len(space) {
			return nil
		}
	}
}

// session runs one connection; finished is true once close was asked and the queue is empty. One goroutine
// does everything: it wakes every logLinger (or at logEarlySend records) while records come or acknowledgements are due, and otherwise
// sleeps until a record comes to an empty buffer (ship wakes it then) or for a second (PING, the server's
// PINGs, a connection the server closed).
func (s *shipper) session() (finished bool, err error) {
	defer s.idle.Store(false) // no sender waits for a wake-up until the next session
	s.cmu.Lock()
	addr, user, pass := s.addr, s.user, s.pass
	s.cmu.Unlock()
	conn, err := net.DialTimeout("tcp", addr, logDialTimeout)
	if err != nil {
		return false, fmt.Errorf("connecting to the log store %s: %w", addr, err)
	}
	defer conn.Close()
	br := bufio.NewReaderSize(conn, 4096)
	_ = conn.SetReadDeadline(time.Now().Add(logDialTimeout))
	info, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(info, "INFO ") {
		return false, fmt.Errorf("the log store %s did not greet as NATS: %q %v", addr, info, err)
	}
	_ = conn.SetReadDeadline(time.Time{})
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return false, fmt.Errorf("the log store connection %T has no file descriptor", conn)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false, err
	}
	c := &natsConn{conn: conn, raw: raw, w: bufio.NewWriterSize(conn, 64*1024)}
	if n := br.Buffered(); n > 0 { // the server said more than INFO already (it waits for CONNECT: not expected)
		rest, _ := br.Peek(n)
		c.in = append(c.in, rest...)
	}
	connect := map[string]any{
		"verbose": false, "pedantic": false, "lang": "go", "version": "kubelambda-agent", "protocol": 1,
		"headers": true, "no_responders": true, "name": "kubelambda-agent " + s.pod,
	}
	if user != "" {
		connect["user"], connect["pass"] = user, pass
	}
	cj, _ := json.Marshal(connect)
	inbox := inboxPrefix(user)
	_, _ = c.w.WriteString("CONNECT ")
	_, _ = c.w.Write(cj)
	_, _ = c.w.WriteString("\r\nSUB " + inbox + "* 1\r\nPING\r\n")
	if err := c.w.Flush(); err != nil {
		return false, err
	}
	s.connections.Add(1)
	started := time.Now()

	// Every published batch waits for its acknowledgement in pending, keyed by the reply token.
	type sent struct {
		at      time.Time
		records int
	}
	pending := map[uint64]sent{}
	settle := func(key uint64, ok bool) {
		p, known := pending[key]
		delete(pending, key)
		if !known {
			return
		}
		s.inflight.Add(-int64(p.records))
		if ok {
			s.stored.Add(uint64(p.records))
		} else {
			s.dropped.Add(uint64(p.records))
		}
	}
	lost := func(expiredOnly bool) { // the connection ended (or acknowledgements are overdue): those are lost
		n := 0
		for k, p := range pending {
			if !expiredOnly || time.Since(p.at) > logAckTimeout {
				delete(pending, k)
				n += p.records
			}
		}
		s.inflight.Add(-int64(n))
		s.dropped.Add(uint64(n))
	}
	defer func() { lost(false) }()

	var seq uint64
	var seqBuf, lenBuf [20]byte
	// send publishes what the buffer holds, one message per request's consecutive records, into the writer (the
	// caller flushes). Only the last message of a batch (of a run of one stream) carries a reply subject:
	// JetStream stores one connection's messages to a stream in order, so its acknowledgement stands for the
	// messages before it, and neither NATS nor the agent handles an acknowledgement per invocation. With no
	// stream for the subject that last message gets the 503 of no responders, and the whole run counts as dropped.
	send := func() error {
		b := s.take()
		defer s.recycle(b)
		if len(b.entries) == 0 {
			return nil
		}
		var err error
		group := 0 // records written since the last reply subject, not yet waiting in pending
		put := func(p []byte) {
			if err == nil {
				_, err = c.w.Write(p)
			}
		}
		b.messages(func(subject string, payload []byte, records int, last bool) bool {
			group += records
			s.inflight.Add(int64(records))
			size := strconv.AppendInt(lenBuf[:0], int64(len(payload)), 10)
			put([]byte("PUB "))
			put([]byte(subject))
			put([]byte(" "))
			if last {
				seq++
				pending[seq] = sent{time.Now(), group}
				group = 0
				put([]byte(inbox))
				put(strconv.AppendUint(seqBuf[:0], seq, 10))
				put([]byte(" "))
			}
			put(size)
			put([]byte("\r\n"))
			put(payload)
			put([]byte("\r\n"))
			return err == nil
		})
		if err != nil {
			s.inflight.Add(-int64(group)) // written without a reply yet: the broken connection lost them
			s.dropped.Add(uint64(group))
		}
		return err
	}
	// exchange reads what came (acknowledgements, PINGs, errors), then flushes what was written.
	exchange := func() error {
		if err := c.poll(); err != nil {
			return err
		}
		if err := s.handle(c, inbox, settle); err != nil {
			return err
		}
		if c.w.Buffered() > 0 {
			return c.w.Flush()
		}
		return nil
	}

	timer := time.NewTimer(logLinger) // the first tick reads the server's answer to CONNECT
	defer timer.Stop()
	housekeeping := time.Now()
	for {
		select {
		case <-s.wake: // a record came to an empty buffer while the sender slept (linger for more), or a burst
			if s.buffered() < logEarlySend {
				timer.Reset(logLinger)
				continue
			}
		case <-s.done:
			if err := send(); err != nil {
				return false, err
			}
			// Wait (briefly) for the acknowledgements of what was sent.
			closeBy := time.Now().Add(logShutdownFlush)
			for {
				if err := exchange(); err != nil {
					return true, err
				}
				if len(pending) == 0 || time.Now().After(closeBy) {
					return true, nil
				}
				time.Sleep(5 * time.Millisecond)
			}
		case <-timer.C:
		}
		now := time.Now()
		if now.Sub(housekeeping) >= time.Second {
			housekeeping = now
			lost(true)
			_, _ = c.w.WriteString("PING\r\n") // a connection that died unnoticed fails its write
		}
		// A login is renewed before the server expires it (logRenew): no more sends on this connection, and once
		// what it sent is acknowledged a new one takes over; records wait in the buffer meanwhile.
		renewing := s.renew > 0 && now.Sub(started) >= s.renew
		if !renewing {
			if err := send(); err != nil {
				return false, err
			}
		}
		if err := exchange(); err != nil {
			return false, err
		}
		if renewing && len(pending) == 0 {
			return false, errRenew
		}
		if renewing || len(pending) > 0 || s.buffered() > 0 {
			timer.Reset(logLinger)
			continue
		}
		// Nothing to send nor to wait for: sleep until ship wakes the sender (the buffer is looked at again after
		// saying so, so that a record added meanwhile is not left waiting for the second).
		s.idle.Store(true)
		if s.buffered() > 0 && s.idle.CompareAndSwap(true, false) {
			timer.Reset(logLinger)
			continue
		}
		timer.Reset(time.Second)
	}
}

// handle deals with what poll read: the server's PINGs answered, acknowledgements settled, an error returned.
// An incomplete line or message stays in c.in for the next poll.
func (s *shipper) handle(c *natsConn, inbox string, settle func(uint64, bool)) error {
	in := c.in
	for {
		i := bytes.Index(in, []byte("\r\n"))
		if i < 0 {
			break
		}
		line, rest := string(in[:i]), in[i+2:]
		switch {
		case line == "PING":
			if _, err := c.w.WriteString("PONG\r\n"); err != nil {
				return err
			}
		case line == "PONG", line == "+OK", strings.HasPrefix(line, "INFO "):
		case strings.HasPrefix(line, "-ERR"):
			return fmt.Errorf("the log store said %s", line)
		case strings.HasPrefix(line, "MSG "), strings.HasPrefix(line, "HMSG "):
			// MSG <subject> <sid> [reply] <size>; HMSG <subject> <sid> [reply] <hdr size> <total size>
			f := strings.Fields(line)
			hmsg := f[0] == "HMSG"
			total, err := strconv.Atoi(f[len(f)-1])
			if err != nil || total < 0 || len(f) < 4 || (hmsg && len(f) < 5) {
				return fmt.Errorf("bad message line from the log store: %q", line)
			}
			if len(rest) < total+2 {
				c.in = append(c.in[:0], in...) // the rest of the message comes with a later poll
				return nil
			}
			body := rest[:total]
			rest = rest[total+2:]
			key, _ := strconv.ParseUint(strings.TrimPrefix(f[1], inbox), 10, 64)
			ok := !hmsg && !bytes.Contains(body, []byte(`"error"`))
			if hmsg { // a status (503: no stream takes the subject) or an answer with headers
				hdrSize, _ := strconv.Atoi(f[len(f)-2])
				status := body[:min(max(hdrSize, 0), len(body))]
				ok = !bytes.Contains(status, []byte(" 503")) && !bytes.Contains(body[len(status):], []byte(`"error"`))
				if !ok {
					s.fail(fmt.Errorf("the log store refused a record (%s)", strings.TrimSpace(string(status))))
				}
			} else if !ok {
				s.fail(fmt.Errorf("the log store refused a record: %s", body))
			}
			settle(key, ok)
		}
		in = rest
	}
	c.in = append(c.in[:0], in...)
	return nil
}

func randomToken() string {
	var b [logInboxTokenSize / 2]byte
	f, err := os.Open("/dev/urandom")
	if err == nil {
		_, _ = f.Read(b[:])
		f.Close()
	} else {
		t := time.Now().UnixNano()
		for i := range b {
			b[i] = byte(t >> (8 * i))
		}
	}
	return fmt.Sprintf("%x", b[:])
}

// writeMetrics adds the shipper's counters to /metrics.
func (s *shipper) writeMetrics(w io.Writer) {
	var queued, stored, dropped, connections uint64
	var inflight int64
	buffered := 0
	if s != nil {
		queued, stored, dropped, inflight = s.queued.Load(), s.stored.Load(), s.dropped.Load(), s.inflight.Load()
		buffered, connections = s.buffered(), s.connections.Load()
	}
	fmt.Fprintf(w, "# HELP kubelambda_agent_log_records_queued_total Log records accepted for shipping to the log store.\n"+
		"# TYPE kubelambda_agent_log_records_queued_total counter\nkubelambda_agent_log_records_queued_total %d\n", queued)
	fmt.Fprintf(w, "# HELP kubelambda_agent_log_records_stored_total Log records the log store acknowledged.\n"+
		"# TYPE kubelambda_agent_log_records_stored_total counter\nkubelambda_agent_log_records_stored_total %d\n", stored)
	fmt.Fprintf(w, "# HELP kubelambda_agent_log_records_dropped_total Log records not stored: buffer full, refused, unacknowledged or lost with the connection.\n"+
		"# TYPE kubelambda_agent_log_records_dropped_total counter\nkubelambda_agent_log_records_dropped_total %d\n", dropped)
	fmt.Fprintf(w, "# HELP kubelambda_agent_log_records_inflight Log records sent, not yet acknowledged.\n"+
		"# TYPE kubelambda_agent_log_records_inflight gauge\nkubelambda_agent_log_records_inflight %d\n", inflight)
	fmt.Fprintf(w, "# HELP kubelambda_agent_log_records_buffered Log records queued in the agent, not yet sent.\n"+
		"# TYPE kubelambda_agent_log_records_buffered gauge\nkubelambda_agent_log_records_buffered %d\n", buffered)
	fmt.Fprintf(w, "# HELP kubelambda_agent_log_connections_total Logins to the log store (reconnections and renewals included).\n"+
		"# TYPE kubelambda_agent_log_connections_total counter\nkubelambda_agent_log_connections_total %d\n", connections)
}

// shipPiped ships what one line read from a worker's pipe became: app, the runtime's part (nil: none or
// filtered out), text, the agent's line behind the marker (nil: none), and out, that line as rendered in JSON
// mode. On the stdout pipe a START line makes its request id the current one, and REPORT ends it.
func (l *logger) shipPiped(stream string, ids *procLog, isStdout bool, app, text []byte, out [][]byte, json bool) {
	if len(app) > 0 {
		l.ship.ship(stream, ids.currentID(), app)
	}
	if text == nil {
		return
	}
	id := requestIDOf(text)
	if isStdout && bytes.HasPrefix(text, []byte("START ")) && id != "" {
		ids.current.Store(&id)
	}
	if id == "" {
		id = ids.currentID()
	}
	if json {
		for _, o := range out {
			l.ship.ship(stream, id, o)
		}
	} else {
		l.ship.ship(stream, id, text)
	}
	if isStdout && bytes.HasPrefix(text, []byte("REPORT ")) {
		ids.current.Store(nil)
	}
}

// logShipConfig is the log shipping part of Config.
type logShipConfig struct {
	URL       string // nats://host:port of the log store; "" = off
	Namespace string // the function's namespace (a warm-pool pod learns it at /specialize)
	Pod       string // this pod's name
	Buffer    int    // records queued at most
	Renew     int    // seconds after which a login is renewed
}

type logShipFlags struct{ url, namespace, pod, buffer, renew *string }

func addLogShipFlags(fs *flag.FlagSet, env func(key, def string) string) logShipFlags {
	host, _ := os.Hostname()
	return logShipFlags{
		url: fs.String("log-nats-url", env("KUBELAMBDA_LOG_NATS_URL", ""),
			"NATS JetStream that keeps the function's log past the pod, nats://host:port; empty = no shipping "+
				"(env KUBELAMBDA_LOG_NATS_URL)"),
		namespace: fs.String("function-namespace", env("KUBELAMBDA_FUNCTION_NAMESPACE", ""),
			"the function's namespace, in shipped log records (env KUBELAMBDA_FUNCTION_NAMESPACE)"),
		pod: fs.String("pod-name", env("KUBELAMBDA_POD_NAME", host),
			"this pod's name, in shipped log records (env KUBELAMBDA_POD_NAME, default the host name)"),
		buffer: fs.String("log-buffer", env("KUBELAMBDA_LOG_BUFFER", strconv.Itoa(defaultLogBuffer)),
			"log records waiting to be shipped, at most; more are dropped and counted (env KUBELAMBDA_LOG_BUFFER)"),
		renew: fs.String("log-renew-seconds", env("KUBELAMBDA_LOG_RENEW_SECONDS", strconv.Itoa(int(defaultLogRenew/time.Second))),
			"seconds after which the log store login is renewed, below the lifetime of the user JWT the platform's "+
				"NATS auth callout issues (a day) (env KUBELAMBDA_LOG_RENEW_SECONDS)"),
	}
}

func (f logShipFlags) parse(bad func(key, value, why string)) logShipConfig {
	c := logShipConfig{URL: *f.url, Namespace: *f.namespace, Pod: *f.pod}
	c.Buffer = intIn(*f.buffer, 1, 1<<24, "log-buffer (KUBELAMBDA_LOG_BUFFER)", bad)
	c.Renew = intIn(*f.renew, 1, 1<<31-1, "log-renew-seconds (KUBELAMBDA_LOG_RENEW_SECONDS)", bad)
	if c.URL != "" {
		if _, err := newShipper(c.URL, "", "", "", "", 1); err != nil {
			bad("log-nats-url (KUBELAMBDA_LOG_NATS_URL)", c.URL, "want nats://host:port")
		}
	}
	return c
}
