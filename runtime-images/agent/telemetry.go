package main

// The Lambda Telemetry API (2022-07-01): an extension subscribes with PUT /2022-07-01/telemetry to the
// platform, function and extension streams of its environment; the agent buffers the events (maxItems,
// maxBytes, timeoutMs) and POSTs them as a JSON array to the extension's HTTP listener, retrying while the
// listener fails and dropping (with a platform.logsDropped event) what does not fit the buffer meanwhile.
// Event records follow Lambda's schema (docs/extensions.md lists what is sent).

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

const telemetryPath = "/2022-07-01/telemetry"

// telemetryEvent is one event: {"time", "type", "record"}, encoded once.
type telemetryEvent struct {
	kind string // "platform", "function" or "extension": the stream it belongs to
	body json.RawMessage
}

func newTelemetryEvent(typ string, record any) telemetryEvent {
	b, _ := json.Marshal(struct {
		Time   string `json:"time"`
		Type   string `json:"type"`
		Record any    `json:"record"`
	}{time.Now().UTC().Format("2006-01-02T15:04:05.000Z"), typ, record})
	kind, _, _ := strings.Cut(typ, ".")
	return telemetryEvent{kind: kind, body: b}
}

// subscription is one extension's Telemetry API subscription.
type subscription struct {
	name     string
	types    map[string]bool
	maxItems int
	maxBytes int
	timeout  time.Duration
	uri      string
	client   *http.Client

	mu           sync.Mutex
	buf          []json.RawMessage
	bufBytes     int
	first        time.Time // when the oldest buffered event came
	dropped      int
	droppedBytes int
	flushNow     bool

	wake chan struct{} // capacity 1
	stop chan struct{} // closed to end delivery
	done chan struct{} // closed when delivery has ended
}

// telemetry is the Telemetry API state of one environment.
type telemetry struct {
	mu    sync.Mutex
	subs  []*subscription
	early []telemetryEvent // platform events of the init phase, for subscriptions made during init
	init  bool             // still in init: keep early events
}

func newTelemetry() *telemetry { return &telemetry{init: true} }

// emit hands an event to every subscription of its stream. It never blocks.
func (t *telemetry) emit(ev telemetryEvent) {
	if t == nil {
		return
	}
	t.mu.Lock()
	if t.init && ev.kind == "platform" && len(t.early) < 100 {
		t.early = append(t.early, ev)
	}
	subs := t.subs
	t.mu.Unlock()
	for _, s := range subs {
		if s.types[ev.kind] {
			s.add(ev.body)
		}
	}
}

func (t *telemetry) emitPlatform(typ string, record any) {
	if t == nil {
		return
	}
	if t.quiet() {
		return // nobody listens: skip the encoding
	}
	t.emit(newTelemetryEvent(typ, record))
}

// quiet: no subscription, and the init phase (whose platform events a later subscription gets) is over. The
// per-invocation events are then not even built: their maps were ~30 allocations a call (BenchmarkInvoke).
func (t *telemetry) quiet() bool {
	if t == nil {
		return true
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.subs) == 0 && !t.init
}

func (t *telemetry) initOver() {
	t.mu.Lock()
	t.init, t.early = false, nil
	t.mu.Unlock()
}

func (s *subscription) add(body json.RawMessage) {
	s.mu.Lock()
	// The buffer holds at most maxItems events and 2*maxBytes bytes waiting; past that the subscriber
	// has fallen behind and events are dropped.
	if len(s.buf) >= s.maxItems || s.bufBytes+len(body) > 2*s.maxBytes {
		s.dropped++
		s.droppedBytes += len(body)
		s.mu.Unlock()
		return
	}
	if len(s.buf) == 0 {
		s.first = time.Now()
	}
	s.buf = append(s.buf, body)
	s.bufBytes += len(body)
	wake := len(s.buf) == 1 || len(s.buf) >= s.maxItems || s.bufBytes >= s.maxBytes
	s.mu.Unlock()
	if wake {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// flush asks for delivery of what is buffered now, without waiting for timeoutMs.
func (s *subscription) flush() {
	s.mu.Lock()
	s.flushNow = true
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// deliver runs until stop: it POSTs batches when the buffer is full, its oldest event is timeoutMs old,
// or a flush was asked for; failed POSTs are retried with a growing delay.
func (s *subscription) deliver() {
	defer close(s.done)
	backoff := 50 * time.Millisecond
	for {
		s.mu.Lock()
		n := len(s.buf)
		var wait time.Duration
		switch {
		case n == 0:
			wait = -1
		case s.flushNow || n >= s.maxItems || s.bufBytes >= s.maxBytes:
			wait = 0
		default:
			wait = s.timeout - time.Since(s.first)
		}
		s.mu.Unlock()
		if wait != 0 {
			var timer *time.Timer
			var fire <-chan time.Time
			if wait > 0 {
				timer = time.NewTimer(wait)
				fire = timer.C
			}
			woken := false
			select {
			case <-s.stop:
			case <-s.wake:
				woken = true
			case <-fire:
			}
			if timer != nil {
				timer.Stop()
			}
			select {
			case <-s.stop:
				return
			default:
			}
			if woken {
				continue
			}
		}
		batch, size := s.take()
		if batch == nil {
			continue
		}
		for !s.post(batch) {
			t := time.NewTimer(backoff)
			select {
			case <-s.stop:
				t.Stop()
				return
			case <-t.C:
			}
			backoff = min(backoff*2, time.Second)
		}
		backoff = 50 * time.Millisecond
		s.mu.Lock()
		s.bufBytes -= size
		s.mu.Unlock()
	}
}

// take removes a batch of at most maxItems events (and about maxBytes) from the buffer, led by a
// platform.logsDropped event when events were dropped. Its bytes stay counted until delivered.
func (s *subscription) take() ([]byte, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.flushNow = false
	if len(s.buf) == 0 {
		return nil, 0
	}
	n, size := 0, 0
	for n < len(s.buf) && n < s.maxItems && (n == 0 || size+len(s.buf[n]) <= s.maxBytes) {
		size += len(s.buf[n])
		n++
	}
	items := s.buf[:n]
	var out bytes.Buffer
	out.WriteByte('[')
	if s.dropped > 0 {
		ev := newTelemetryEvent("platform.logsDropped", map[string]any{
			"droppedRecords": s.dropped, "droppedBytes": s.droppedBytes,
			"reason": "Consumer seems to have fallen behind as it has not acknowledged receipt of logs.",
		})
		out.Write(ev.body)
		out.WriteByte(',')
		s.dropped, s.droppedBytes = 0, 0
	}
	for i, b := range items {
		if i > 0 {
			out.WriteByte(',')
		}
		out.Write(b)
	}
	out.WriteByte(']')
	s.buf = append([]json.RawMessage(nil), s.buf[n:]...)
	if len(s.buf) > 0 {
		s.first = time.Now()
	}
	return out.Bytes(), size
}

func (s *subscription) post(batch []byte) bool {
	resp, err := s.client.Post(s.uri, "application/json", bytes.NewReader(batch))
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode < 300
}

// subscribeRequest is the body of PUT /2022-07-01/telemetry.
type subscribeRequest struct {
	SchemaVersion string   `json:"schemaVersion"`
	Types         []string `json:"types"`
	Buffering     *struct {
		MaxItems  *int `json:"maxItems"`
		MaxBytes  *int `json:"maxBytes"`
		TimeoutMs *int `json:"timeoutMs"`
	} `json:"buffering"`
	Destination *struct {
		Protocol string `json:"protocol"`
		URI      string `json:"URI"`
	} `json:"destination"`
}

// serveTelemetry answers PUT /2022-07-01/telemetry.
func (es *extSet) serveTelemetry(rw http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPut {
		runtimeErr(rw, http.StatusMethodNotAllowed, "MethodNotAllowed", r.Method+" is not allowed on "+r.URL.Path)
		return
	}
	p := es.p
	id := r.Header.Get("Lambda-Extension-Identifier")
	p.mu.Lock()
	x := es.byID[id]
	shutting := es.phase == extPhaseShutdown
	p.mu.Unlock()
	if x == nil {
		runtimeErr(rw, http.StatusForbidden, "Telemetry.UnknownExtensionIdentifier",
			"the Lambda-Extension-Identifier header must name a registered extension")
		return
	}
	if shutting {
		runtimeErr(rw, http.StatusForbidden, "InvalidStateTransition", "the environment is shutting down")
		return
	}
	body, tooLarge, err := readBody(r, 64<<10)
	var req subscribeRequest
	if err != nil || tooLarge || json.Unmarshal(body, &req) != nil {
		runtimeErr(rw, http.StatusBadRequest, "ValidationError", "the body must be a JSON subscription request")
		return
	}
	s, msg := newSubscription(x.name, &req)
	if s == nil {
		runtimeErr(rw, http.StatusBadRequest, "ValidationError", msg)
		return
	}
	t := es.tel
	t.mu.Lock()
	for _, old := range t.subs {
		if old.name == x.name { // a new subscription replaces the extension's previous one
			close(old.stop)
		}
	}
	subs := make([]*subscription, 0, len(t.subs)+1)
	for _, old := range t.subs {
		if old.name != x.name {
			subs = append(subs, old)
		}
	}
	// The platform events of the init phase so far come first, in order.
	for _, ev := range t.early {
		if s.types[ev.kind] {
			s.add(ev.body)
		}
	}
	t.subs = append(subs, s)
	t.mu.Unlock()
	go s.deliver()
	types := make([]string, 0, len(s.types))
	for _, typ := range []string{"platform", "function", "extension"} {
		if s.types[typ] {
			types = append(types, typ)
		}
	}
	t.emitPlatform("platform.telemetrySubscription", map[string]any{"name": x.name, "state": "Subscribed", "types": types})
	rw.Header()["Content-Type"] = []string{"application/json"}
	rw.WriteHeader(http.StatusOK)
	_, _ = rw.Write([]byte(`"OK"` + "\n"))
}

// newSubscription checks a subscription request; on a bad one it returns nil and what is wrong.
func newSubscription(name string, req *subscribeRequest) (*subscription, string) {
	switch req.SchemaVersion {
	case "2022-07-01", "2022-12-13":
	default:
		return nil, fmt.Sprintf("schemaVersion %q: want 2022-07-01 or 2022-12-13", req.SchemaVersion)
	}
	s := &subscription{name: name, types: map[string]bool{}, maxItems: 10000, maxBytes: 262144, timeout: time.Second,
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	if len(req.Types) == 0 {
		return nil, "types: want at least one of platform, function, extension"
	}
	for _, typ := range req.Types {
		if typ != "platform" && typ != "function" && typ != "extension" {
			return nil, fmt.Sprintf("types: %q is not platform, function or extension", typ)
		}
		s.types[typ] = true
	}
	if b := req.Buffering; b != nil {
		check := func(field string, v *int, lo, hi int, dst *int) string {
			if v == nil {
				return ""
			}
			if *v < lo || *v > hi {
				return fmt.Sprintf("buffering.%s %d: want %d..%d", field, *v, lo, hi)
			}
			*dst = *v
			return ""
		}
		ms := 1000
		for _, m := range []string{
			check("maxItems", b.MaxItems, 1000, 10000, &s.maxItems),
			check("maxBytes", b.MaxBytes, 262144, 1048576, &s.maxBytes),
			check("timeoutMs", b.TimeoutMs, 25, 30000, &ms),
		} {
			if m != "" {
				return nil, m
			}
		}
		s.timeout = time.Duration(ms) * time.Millisecond
	}
	d := req.Destination
	if d == nil {
		return nil, "destination: required, {\"protocol\": \"HTTP\", \"URI\": \"http://sandbox.localdomain:PORT/\"}"
	}
	if d.Protocol != "HTTP" {
		return nil, fmt.Sprintf("destination.protocol %q: only HTTP is served", d.Protocol)
	}
	u, err := url.Parse(d.URI)
	if err != nil || u.Scheme != "http" || u.Port() == "" {
		return nil, fmt.Sprintf("destination.URI %q: want http://sandbox.localdomain:PORT[/PATH]", d.URI)
	}
	switch u.Hostname() {
	case "sandbox.localdomain", "sandbox", "localhost", "127.0.0.1", "::1":
	default:
		return nil, fmt.Sprintf("destination.URI %q: telemetry goes only to a listener inside the environment "+
			"(sandbox.localdomain, localhost)", d.URI)
	}
	// sandbox.localdomain is the environment itself, as on Lambda.
	host := u.Hostname()
	if host == "sandbox.localdomain" || host == "sandbox" {
		host = "127.0.0.1"
	}
	u.Host = net.JoinHostPort(host, u.Port())
	s.uri = u.String()
	s.client = &http.Client{Timeout: 5 * time.Second}
	return s, ""
}

// closeAll flushes every subscription (at most until deadline) and ends delivery.
func (t *telemetry) closeAll(deadline time.Time) {
	t.mu.Lock()
	subs := t.subs
	t.subs = nil
	t.mu.Unlock()
	for _, s := range subs {
		s.flush()
	}
	for _, s := range subs {
		for {
			s.mu.Lock()
			empty := len(s.buf) == 0 && s.bufBytes == 0
			s.mu.Unlock()
			if empty || time.Now().After(deadline) {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		select {
		case <-s.stop:
		default:
			close(s.stop)
		}
		<-s.done
	}
}

// lineTee passes each write on to w and also emits it as a telemetry log record of kind ("function" or
// "extension"). The agent's own START/END/REPORT lines are platform events, not function logs.
type lineTee struct {
	w    io.Writer
	tel  *telemetry
	kind string
}

func (l *lineTee) Write(b []byte) (int, error) {
	n, err := l.w.Write(b)
	l.record(b)
	return n, err
}

// record emits one line (b, its newline included) as a telemetry record, if some subscription takes its kind.
func (l *lineTee) record(b []byte) {
	if l.tel.listening(l.kind) {
		line := strings.TrimRight(string(b), "\n")
		if l.kind != "function" || !(strings.HasPrefix(line, "START RequestId: ") ||
			strings.HasPrefix(line, "END RequestId: ") || strings.HasPrefix(line, "REPORT RequestId: ")) {
			l.tel.emit(newTelemetryEvent(l.kind, line))
		}
	}
}

// listening: some subscription takes the stream kind.
func (t *telemetry) listening(kind string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, s := range t.subs {
		if s.types[kind] {
			return true
		}
	}
	return false
}

// Platform events of the lifecycle.

func (t *telemetry) initStart(initType string) {
	t.emitPlatform("platform.initStart", map[string]any{"initializationType": initType, "phase": "init"})
}

func (t *telemetry) initRuntimeDone(initType, status string) {
	t.emitPlatform("platform.initRuntimeDone", map[string]any{"initializationType": initType, "phase": "init", "status": status})
}

func (t *telemetry) initReport(initType, status string, d time.Duration) {
	t.emitPlatform("platform.initReport", map[string]any{"initializationType": initType, "phase": "init", "status": status,
		"metrics": map[string]any{"durationMs": msFloat(d)}})
}

func tracing(inv *invocation) map[string]string {
	return map[string]string{"type": "X-Amzn-Trace-Id", "value": inv.traceID}
}

func (t *telemetry) start(inv *invocation, version string) {
	if t.quiet() {
		return
	}
	t.emitPlatform("platform.start", map[string]any{"requestId": inv.id, "version": version, "tracing": tracing(inv)})
}

// runtimeDone reports the end of the runtime's work on inv, once.
func (t *telemetry) runtimeDone(inv *invocation, status, errType string) {
	if t == nil || inv.runtimeDone.Swap(true) || t.quiet() {
		return
	}
	rec := map[string]any{"requestId": inv.id, "status": status, "tracing": tracing(inv),
		"metrics": map[string]any{"durationMs": msFloat(inv.sinceStart()), "producedBytes": len(inv.res.body)}}
	if errType != "" {
		rec["errorType"] = errType
	}
	t.emitPlatform("platform.runtimeDone", rec)
}

func (t *telemetry) report(inv *invocation, d time.Duration, ri reportInfo) {
	if t == nil {
		return
	}
	status := "success"
	switch ri.status {
	case "timeout":
		status = "timeout"
	case "error":
		status = "error"
	}
	t.runtimeDone(inv, status, ri.errType)
	if t.quiet() {
		return
	}
	metrics := map[string]any{"durationMs": msFloat(d), "billedDurationMs": billedMs(d),
		"memorySizeMB": ri.memoryMB, "maxMemoryUsedMB": ri.maxMemMB}
	if ri.initDur > 0 {
		metrics["initDurationMs"] = msFloat(ri.initDur)
	}
	rec := map[string]any{"requestId": inv.id, "status": status, "metrics": metrics, "tracing": tracing(inv)}
	if ri.errType != "" {
		rec["errorType"] = ri.errType
	}
	t.emitPlatform("platform.report", rec)
}

func msFloat(d time.Duration) float64 {
	return float64(d.Microseconds()) / 1000
}
