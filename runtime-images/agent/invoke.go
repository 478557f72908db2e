package main

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// The invoke endpoint, for the gateway: POST /invoke (also served at the Lambda Invoke API path,
// POST /2015-03-31/functions/{name}/invocations, so that Lambda tooling can call an agent directly).
//
// Request headers (all optional):
//
//	Lambda-Runtime-Aws-Request-Id        request id (generated when absent)
//	Lambda-Runtime-Deadline-Ms           epoch ms; can only shorten the function timeout
//	Lambda-Runtime-Invoked-Function-Arn  ARN the caller used (default: the configured one)
//	Lambda-Runtime-Trace-Id / X-Amzn-Trace-Id
//	traceparent                          W3C Trace Context: passed to the runtime as is; the X-Ray form of
//	                                     it is the trace id when neither header above is sent
//	Lambda-Runtime-Client-Context        client context JSON, or X-Amz-Client-Context as base64 JSON
//	Lambda-Runtime-Cognito-Identity      cognito identity JSON
//	X-Amz-Log-Type: Tail                 answer with X-Amz-Log-Result, the base64 of the last 4 KB of
//	                                     the invocation's log (START to REPORT)
//
// Answers: see writeResult and docs/runtimes.md.

type invokeAPI struct {
	pool    *pool
	cfg     *Config
	metrics *metrics
	auth    *agentAuth
}

func (a *invokeAPI) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		rw.Header().Set("Allow", "POST")
		apiError(rw, http.StatusMethodNotAllowed, "InvalidRequestContentException", "use POST")
		return
	}
	if !a.pool.live.Load() {
		apiError(rw, http.StatusServiceUnavailable, "ServiceException",
			"this is a generic warm-pool instance: POST /specialize gives it a function first")
		return
	}
	received := time.Now()
	body, tooLarge, err := readBody(r, a.cfg.MaxRequest)
	if err != nil {
		apiError(rw, http.StatusBadRequest, "InvalidRequestContentException", "could not read the request body: "+err.Error())
		return
	}
	if tooLarge {
		a.metrics.requestTooLarge.Add(1)
		apiError(rw, http.StatusRequestEntityTooLarge, "RequestTooLargeException",
			"Request must be smaller than "+strconv.Itoa(a.cfg.MaxRequest)+" bytes for the InvokeFunction operation")
		return
	}
	if len(body) == 0 {
		body = []byte("{}") // Lambda gives an empty invoke payload to the function as {}.
	} else if !a.auth.fromGateway(r) && (!utf8.Valid(body) || !json.Valid(body)) {
		// The gateway has refused a body that is not JSON before it signs the call (checking a 1,000-record batch
		// again cost ~1.4 ms of CPU: BenchmarkValidateBody); any other caller's body is checked. Go's JSON accepts invalid UTF-8; Lambda does not.
		a.metrics.invalidRequest.Add(1)
		apiError(rw, http.StatusBadRequest, "InvalidRequestContentException",
			"Could not parse request body into json: the payload is not valid JSON")
		return
	}
	inv, err := a.newInvocation(r, body, received)
	if err != nil {
		a.metrics.invalidRequest.Add(1)
		apiError(rw, http.StatusBadRequest, "InvalidRequestContentException", err.Error())
		return
	}
	refused, ok := a.pool.submit(inv)
	if !ok {
		putBody(body)
		a.metrics.record(refused, 0)
		a.writeRefusal(rw, refused)
		return
	}
	for ended := false; !ended; {
		timer := time.NewTimer(time.Until(inv.deadline()))
		select {
		case <-inv.done:
			ended = true
		case <-inv.moved: // re-armed with the new deadline
		case <-timer.C:
			if ended = a.pool.expire(inv); ended {
				<-inv.done
			}
		}
		timer.Stop()
	}
	a.metrics.record(inv.res.outcome, time.Since(received))
	if inv.tail != nil {
		// The log reader finishes the capture at REPORT; it is right behind the answer.
		t := time.NewTimer(2 * time.Second)
		select {
		case <-inv.tail.done:
		case <-t.C:
		}
		t.Stop()
		rw.Header()["X-Amz-Log-Result"] = []string{base64.StdEncoding.EncodeToString(inv.tail.tail())}
	}
	a.writeResult(rw, inv)
	// The buffers go back to the pool (bufpool.go) when nothing reads them any more: the event once the runtime's
	// "next" has written it (a runtime killed while it was being written may still hold it), a function's
	// answer once written here (only a success's: an init error's body answers every call until a new init).
	if inv.delivered.Load() {
		putBody(body)
	}
	if inv.res.outcome == outSuccess {
		putBody(inv.res.body)
	}
}

func (a *invokeAPI) newInvocation(r *http.Request, body []byte, now time.Time) (*invocation, error) {
	h := r.Header
	inv := &invocation{payload: body, done: make(chan struct{}), moved: make(chan struct{}, 1)}
	inv.setDeadline(now.Add(a.cfg.Timeout))
	inv.id = headerValue(h, "Lambda-Runtime-Aws-Request-Id")
	if inv.id == "" {
		inv.id = newRequestID()
	} else if len(inv.id) > 256 || strings.ContainsAny(inv.id, "/?#% \t") {
		return nil, errBadHeader("Lambda-Runtime-Aws-Request-Id", "must be at most 256 characters without / ? # % or spaces")
	}
	if v := headerValue(h, "Lambda-Runtime-Deadline-Ms"); v != "" {
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return nil, errBadHeader("Lambda-Runtime-Deadline-Ms", "must be epoch milliseconds")
		}
		if d := time.UnixMilli(ms); d.Before(inv.deadline()) {
			inv.setDeadline(d)
		}
		inv.ownDeadline = true
	}
	inv.arn = headerValue(h, "Lambda-Runtime-Invoked-Function-Arn")
	if inv.arn == "" {
		inv.arn = a.cfg.FunctionARN
	}
	inv.traceID = headerValue(h, "Lambda-Runtime-Trace-Id")
	if inv.traceID == "" {
		inv.traceID = headerValue(h, "X-Amzn-Trace-Id")
	}
	if tp := headerValue(h, "Traceparent"); tp != "" {
		if xray, ok := xrayOfTraceparent(tp); ok {
			inv.traceparent = tp
			if inv.traceID == "" {
				inv.traceID = xray
			}
		}
	}
	if inv.traceID == "" {
		inv.traceID = newTraceID(now)
	}
	inv.clientContext = headerValue(h, "Lambda-Runtime-Client-Context")
	if v := headerValue(h, "X-Amz-Client-Context"); v != "" && inv.clientContext == "" {
		dec, err := base64.StdEncoding.DecodeString(v)
		if err != nil || !json.Valid(dec) {
			return nil, errBadHeader("X-Amz-Client-Context", "must be base64-encoded JSON")
		}
		inv.clientContext = string(dec)
	}
	inv.cognito = headerValue(h, "Lambda-Runtime-Cognito-Identity")
	if strings.EqualFold(headerValue(h, "X-Amz-Log-Type"), "Tail") {
		inv.tail = newCapture()
	}
	return inv, nil
}

type badHeader struct{ name, why string }

func (e badHeader) Error() string { return "header " + e.name + " " + e.why }

func errBadHeader(name, why string) error { return badHeader{name, why} }

// headerValue reads a header by its canonical name without allocating.
func headerValue(h http.Header, canonical string) string {
	if v := h[canonical]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// newTraceID makes an X-Ray style trace header for callers that send none.
func newTraceID(now time.Time) string {
	// Trace ids need to be unique, not secret: a fast non-cryptographic generator will do.
	return "Root=1-" + strconv.FormatInt(now.Unix(), 16) + "-" + fastHex(24) + ";Parent=" + fastHex(16) + ";Sampled=0"
}

// xrayOfTraceparent gives a W3C traceparent (version 00) in X-Ray's form, as Lambda derives
// _X_AMZN_TRACE_ID from a trace: Root=1-<first 8 hex of the trace id>-<other 24>;Parent=<span id>;Sampled=<0|1>.
func xrayOfTraceparent(tp string) (string, bool) {
	// 00-<32 hex trace id>-<16 hex span id>-<2 hex flags>
	if len(tp) != 55 || tp[:3] != "00-" || tp[35] != '-' || tp[52] != '-' || !isLowerHex(tp[3:35]) ||
		!isLowerHex(tp[36:52]) || !isLowerHex(tp[53:]) {
		return "", false
	}
	sampled := "0"
	if strings.IndexByte("13579bdf", tp[54]) >= 0 {
		sampled = "1"
	}
	return "Root=1-" + tp[3:11] + "-" + tp[11:35] + ";Parent=" + tp[36:52] + ";Sampled=" + sampled, true
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// writeResult answers an admitted invocation. The status is 200 whenever the function ran or was
// meant to run (as Lambda's Invoke API); X-Amz-Function-Error marks the body as Lambda's error JSON,
// and X-Kubelambda-Outcome says which kind of answer it is.
func (a *invokeAPI) writeResult(rw http.ResponseWriter, inv *invocation) {
	h := rw.Header()
	h["Content-Type"] = []string{"application/json"}
	h["X-Amz-Executed-Version"] = []string{a.cfg.FunctionVersion}
	h["Lambda-Runtime-Aws-Request-Id"] = []string{inv.id}
	h["X-Kubelambda-Outcome"] = []string{outcomeNames[inv.res.outcome]}
	if inv.res.outcome != outSuccess {
		h["X-Amz-Function-Error"] = []string{"Unhandled"}
		h["X-Kubelambda-Error-Type"] = []string{inv.res.errType}
	}
	h["Content-Length"] = []string{strconv.Itoa(len(inv.res.body))}
	rw.WriteHeader(http.StatusOK)
	_, _ = rw.Write(inv.res.body)
}

func (a *invokeAPI) writeRefusal(rw http.ResponseWriter, o outcome) {
	rw.Header()["X-Kubelambda-Outcome"] = []string{outcomeNames[o]}
	if o == outRefusedDraining {
		apiError(rw, http.StatusServiceUnavailable, "ServiceException", "the instance is shutting down; retry on another")
		return
	}
	rw.Header()["Retry-After"] = []string{"0"}
	apiError(rw, http.StatusTooManyRequests, "TooManyRequestsException",
		"Rate Exceeded: all "+strconv.Itoa(a.cfg.Workers)+" workers of this instance are busy")
}

// apiError writes an Invoke API error in the rest-json form.
func apiError(rw http.ResponseWriter, status int, errType, msg string) {
	b, _ := json.Marshal(struct {
		Type    string `json:"Type"`
		Message string `json:"message"`
		Reason  string `json:"Reason,omitempty"`
	}{"User", msg, reasonFor(errType)})
	h := rw.Header()
	h["Content-Type"] = []string{"application/json"}
	h["X-Amzn-Errortype"] = []string{errType}
	rw.WriteHeader(status)
	_, _ = rw.Write(b)
}

func reasonFor(errType string) string {
	if errType == "TooManyRequestsException" {
		return "ConcurrentInvocationLimitExceeded"
	}
	return ""
}
