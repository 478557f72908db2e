package main

import (
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// The Lambda Runtime API (2018-06-01), one server per worker on the pod's loopback.

const runtimePrefix = "/2018-06-01/runtime/"

type routeKind int

const (
	routeUnknown routeKind = iota
	routeNext
	routeResponse
	routeError
	routeInitError
)

// parseRuntimePath maps a Runtime API path to its route and, for response/error, the request id.
func parseRuntimePath(path string) (routeKind, string) {
	rest, ok := strings.CutPrefix(path, runtimePrefix)
	if !ok {
		return routeUnknown, ""
	}
	switch rest {
	case "invocation/next":
		return routeNext, ""
	case "init/error":
		return routeInitError, ""
	}
	rest, ok = strings.CutPrefix(rest, "invocation/")
	if !ok {
		return routeUnknown, ""
	}
	slash := strings.LastIndexByte(rest, '/')
	if slash <= 0 {
		return routeUnknown, ""
	}
	id, verb := rest[:slash], rest[slash+1:]
	if strings.IndexByte(id, '/') >= 0 {
		return routeUnknown, ""
	}
	switch verb {
	case "response":
		return routeResponse, id
	case "error":
		return routeError, id
	}
	return routeUnknown, ""
}

type runtimeAPI struct {
	pool *pool
	w    *worker
}

func (a *runtimeAPI) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, extensionsPrefix) || strings.HasPrefix(r.URL.Path, "/2022-07-01/") {
		a.pool.serveExtensionAPI(rw, r, a.w) // extensions.go
		return
	}
	route, id := parseRuntimePath(r.URL.Path)
	pr := a.w.cur.Load()
	if pr == nil {
		runtimeErr(rw, http.StatusInternalServerError, "Runtime.Unknown", "no runtime process")
		return
	}
	if r.URL.Path == specializationPath {
		a.awaitSpecialization(rw, r, pr)
		return
	}
	want := http.MethodPost
	if route == routeNext {
		want = http.MethodGet
	}
	if route == routeUnknown {
		runtimeErr(rw, http.StatusNotFound, "UnknownPath", "no such Runtime API path: "+r.URL.Path)
		return
	}
	if r.Method != want {
		runtimeErr(rw, http.StatusMethodNotAllowed, "MethodNotAllowed", r.Method+" is not allowed on "+r.URL.Path)
		return
	}
	switch route {
	case routeNext:
		a.next(rw, r, pr)
	case routeResponse:
		a.response(rw, r, pr, id)
	case routeError:
		a.error(rw, r, pr, id)
	case routeInitError:
		a.initError(rw, r, pr)
	}
}

func runtimeErr(rw http.ResponseWriter, status int, errType, msg string) {
	rw.Header()["Content-Type"] = []string{"application/json"}
	rw.WriteHeader(status)
	_, _ = rw.Write(errorJSON(errType, msg))
}

var acceptedBody = []byte(`{"status":"OK"}` + "\n")

func accepted(rw http.ResponseWriter) {
	rw.Header()["Content-Type"] = []string{"application/json"}
	rw.WriteHeader(http.StatusAccepted)
	_, _ = rw.Write(acceptedBody)
}

func (a *runtimeAPI) next(rw http.ResponseWriter, r *http.Request, pr *proc) {
	if stale := a.pool.nextReady(pr); stale != nil {
		a.pool.logReport(pr, stale, reportInfo{status: "error", errType: "Runtime.NoResponse", memoryMB: a.pool.cfg.MemoryMB})
		stale.finish(result{outcome: outCrash, errType: "Runtime.NoResponse",
			body: errorJSON("Runtime.NoResponse", "RequestId: "+stale.id+" Error: the runtime asked for the next event without answering this one")})
	}
	var inv *invocation
	select {
	case inv = <-pr.events:
	case <-pr.exited:
		return
	case <-r.Context().Done():
		a.pool.unready(pr)
		return
	}
	if r.Context().Err() != nil {
		// The request went away as the event arrived: keep the event for the runtime's next "next"
		// (the channel has room, it was just emptied).
		pr.events <- inv
		return
	}
	h := rw.Header()
	h["Content-Type"] = []string{"application/json"}
	h["Lambda-Runtime-Aws-Request-Id"] = []string{inv.id}
	h["Lambda-Runtime-Deadline-Ms"] = []string{strconv.FormatInt(inv.deadline().UnixMilli(), 10)}
	h["Lambda-Runtime-Invoked-Function-Arn"] = []string{inv.arn}
	h["Lambda-Runtime-Trace-Id"] = []string{inv.traceID}
	if inv.traceparent != "" { // for runtimes and handlers that read W3C Trace Context (docs/tracing.md)
		h["Traceparent"] = []string{inv.traceparent}
	}
	if inv.clientContext != "" {
		h["Lambda-Runtime-Client-Context"] = []string{inv.clientContext}
	}
	if inv.cognito != "" {
		h["Lambda-Runtime-Cognito-Identity"] = []string{inv.cognito}
	}
	h["Content-Length"] = []string{strconv.Itoa(len(inv.payload))}
	inv.markStarted()
	a.pool.logStart(pr, inv)
	rw.WriteHeader(http.StatusOK)
	_, _ = rw.Write(inv.payload)
	inv.delivered.Store(true) // the payload's buffer may be used again (invokeAPI.ServeHTTP)
}

// drainLimit bounds how much of an oversize body is read and thrown away so that the client,
// which may still be sending, gets the 413 rather than a reset connection.
const drainLimit = 64 << 20

// readBody reads at most limit bytes; tooLarge reports a longer body (then drained, up to drainLimit).
func readBody(r *http.Request, limit int) (body []byte, tooLarge bool, err error) {
	if r.ContentLength > int64(limit) {
		_, _ = io.CopyN(io.Discard, r.Body, drainLimit)
		return nil, true, nil
	}
	size := 512
	if r.ContentLength > 0 {
		size = int(r.ContentLength) + 1
	}
	buf := getBody(size) // bufpool.go; the caller gives it back with putBody once nothing reads it
	if cap(buf) > limit+1 {
		buf = buf[: 0 : limit+1] // the read stops one byte past the limit
	}
	lr := &io.LimitedReader{R: r.Body, N: int64(limit) + 1}
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := lr.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, false, err
		}
	}
	if len(buf) > limit {
		putBody(buf)
		_, _ = io.CopyN(io.Discard, r.Body, drainLimit)
		return nil, true, nil
	}
	return buf, false, nil
}

func (a *runtimeAPI) response(rw http.ResponseWriter, r *http.Request, pr *proc, id string) {
	body, tooLarge, err := readBody(r, a.pool.cfg.MaxResponse)
	if err != nil {
		runtimeErr(rw, http.StatusBadRequest, "InvalidRequest", "reading the response: "+err.Error())
		return
	}
	inv := a.pool.complete(pr, id)
	if inv == nil {
		putBody(body)
		a.unknownID(rw, pr, id)
		return
	}
	res := result{outcome: outSuccess, body: body} // its buffer goes back to the pool once answered (invoke.go)
	status := ""
	if tooLarge {
		msg := "Response payload size exceeded maximum allowed payload size (" + strconv.Itoa(a.pool.cfg.MaxResponse) + " bytes)."
		res = result{outcome: outResponseTooLarge, errType: "Function.ResponseSizeTooLarge",
			body: errorJSON("Function.ResponseSizeTooLarge", msg)}
		status = "error"
		runtimeErr(rw, http.StatusRequestEntityTooLarge, "RequestEntityTooLarge", msg)
	} else {
		accepted(rw)
	}
	inv.finish(res)
	a.pool.reportWhenDone(pr, inv, reportInfo{status: status, errType: res.errType, memoryMB: a.pool.cfg.MemoryMB,
		maxMemMB: pr.rss.peakMB(int(pr.pid.Load())), initDur: a.pool.takeCold(pr)})
}

func (a *runtimeAPI) unknownID(rw http.ResponseWriter, pr *proc, id string) {
	if cur := a.pool.current(pr); cur == nil {
		runtimeErr(rw, http.StatusBadRequest, "InvalidRequestID", "no invocation "+id+" is in progress (it may have timed out)")
	} else {
		runtimeErr(rw, http.StatusBadRequest, "InvalidRequestID", "invocation "+id+" is not the one in progress")
	}
}

// errorBody makes sure the error the caller sees is Lambda's error JSON object.
func errorBody(body []byte, headerType string) ([]byte, string) {
	var e struct {
		ErrorType string `json:"errorType"`
	}
	if len(body) > 0 && body[0] == '{' && json.Unmarshal(body, &e) == nil {
		if e.ErrorType != "" {
			headerType = e.ErrorType
		}
		if headerType == "" {
			headerType = "Runtime.Unknown"
		}
		return body, headerType
	}
	if headerType == "" {
		headerType = "Runtime.Unknown"
	}
	return errorJSON(headerType, string(body)), headerType
}

func (a *runtimeAPI) error(rw http.ResponseWriter, r *http.Request, pr *proc, id string) {
	body, tooLarge, err := readBody(r, a.pool.cfg.MaxResponse)
	if err != nil {
		runtimeErr(rw, http.StatusBadRequest, "InvalidRequest", "reading the error: "+err.Error())
		return
	}
	inv := a.pool.complete(pr, id)
	if inv == nil {
		a.unknownID(rw, pr, id)
		return
	}
	errType := r.Header.Get("Lambda-Runtime-Function-Error-Type")
	if tooLarge {
		body, errType = errorJSON("Function.ResponseSizeTooLarge", "error payload too large"), "Function.ResponseSizeTooLarge"
	} else {
		body, errType = errorBody(body, errType)
	}
	accepted(rw)
	inv.finish(result{outcome: outFunctionError, errType: errType, body: body})
	a.pool.reportWhenDone(pr, inv, reportInfo{status: "error", errType: errType, memoryMB: a.pool.cfg.MemoryMB,
		maxMemMB: pr.rss.peakMB(int(pr.pid.Load())), initDur: a.pool.takeCold(pr)})
}

// initError records why the runtime could not initialise; the runtime is expected to exit, and is
// killed if it has not after a grace period. The error answers the next invocation.
func (a *runtimeAPI) initError(rw http.ResponseWriter, r *http.Request, pr *proc) {
	body, tooLarge, err := readBody(r, a.pool.cfg.MaxResponse)
	if err != nil || tooLarge {
		body = nil
	}
	a.pool.mu.Lock()
	initialised := pr.initDone
	a.pool.mu.Unlock()
	if initialised {
		runtimeErr(rw, http.StatusForbidden, "InvalidStateTransition", "the runtime has already initialised")
		return
	}
	body, errType := errorBody(body, r.Header.Get("Lambda-Runtime-Function-Error-Type"))
	pr.initErrMu.Lock()
	pr.initErr, pr.initErrType = body, errType
	pr.initErrMu.Unlock()
	accepted(rw)
	go func() {
		t := time.NewTimer(2 * time.Second)
		defer t.Stop()
		select {
		case <-pr.exited:
		case <-t.C:
			pr.kill()
		}
	}()
}
