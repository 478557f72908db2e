package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"
)

// streamBatch is an event of n DynamoDB Streams records as the PostgreSQL bridge sends them (bench-postgres's
// table: a key and a text column), about 527 bytes a record.
func streamBatch(n int) []byte {
	var b strings.Builder
	b.WriteString(`{"Records":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"eventID":"%032x","eventName":"INSERT","eventVersion":"1.1","eventSource":"aws:dynamodb",`+
			`"awsRegion":"us-east-1","dynamodb":{"ApproximateCreationDateTime":1796510000.%03d,"Keys":{"id":{"N":"%d"}},`+
			`"NewImage":{"id":{"N":"%d"},"body":{"S":"%s"},"created":{"S":"2026-12-06T00:00:00.%06dZ"}},`+
			`"SequenceNumber":"%021d","SizeBytes":%d,"StreamViewType":"NEW_AND_OLD_IMAGES"},`+
			`"eventSourceARN":"arn:aws:dynamodb:us-east-1:bench:table/public.items/stream/2026-12-06T00:00:00.000"}`,
			i, i%1000, i, i, "payload é", i, i, 100+i%50)
	}
	b.WriteString(`]}`)
	return []byte(b.String())
}

// The agent's own check of a body (what a caller without the gateway's token gets): per 1,000-record batch.
func BenchmarkValidateBody(b *testing.B) {
	body := streamBatch(1000)
	b.SetBytes(int64(len(body)))
	b.ReportMetric(float64(len(body)), "body_bytes")
	var before, after syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	for b.Loop() {
		if !utf8.Valid(body) || !json.Valid(body) {
			b.Fatal("invalid")
		}
	}
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &after)
	// CPU time, not wall time: on a loaded machine the wall time counts other processes' turns too.
	cpu := time.Duration(after.Utime.Nano() + after.Stime.Nano() - before.Utime.Nano() - before.Stime.Nano())
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N)/1000, "cpu_us/record")
}

// invokeWith posts body to /invoke with token; the status, then the answer (prefixed by its error type, if any).
func invokeWith(t *testing.T, url, token string, body []byte) (int, string) {
	t.Helper()
	status, header, b := send(t, "POST", url+"/invoke", token, body)
	if kind := header.Get("X-Amzn-Errortype"); kind != "" {
		return status, kind + ": " + string(b)
	}
	return status, string(b)
}

var notJSON = [][]byte{[]byte("hello"), []byte(`{"a":1`), []byte("\"\xff\""), []byte("NaN")}

// A caller without the gateway's token (a platform without an agent key: anyone may call) gets Lambda's error
// for a body that is not JSON, before anything reaches the function.
func TestBodyIsCheckedForCallersWithoutTheToken(t *testing.T) {
	a := startAgent(t, 1, 2*time.Second, "echo")
	waitFor(t, "readiness", a.pool.isReady)
	for _, body := range notJSON {
		status, answer := invokeWith(t, a.url, "", body)
		if status != 400 || !strings.Contains(answer, "InvalidRequestContentException") ||
			!strings.Contains(answer, "Could not parse request body into json") {
			t.Errorf("body %q: %d %s", body, status, answer)
		}
	}
	if got := a.pool.metrics.invalidRequest.Load(); got != uint64(len(notJSON)) {
		t.Errorf("invalid requests counted %d, want %d", got, len(notJSON))
	}
	if status, answer := invokeWith(t, a.url, "", streamBatch(3)); status != 200 || answer != string(streamBatch(3)) {
		t.Errorf("a JSON body: %d %.200s", status, answer)
	}
}

// The gateway's signed calls (the pod's token) are not checked again: the gateway checked the body before it
// signed the call. What reaches the function is the body as sent.
func TestBodyFromTheGatewayIsNotCheckedAgain(t *testing.T) {
	t.Setenv(agentTokenEnv, "function-token")
	a := startAgent(t, 1, 2*time.Second, "echo")
	waitFor(t, "readiness", a.pool.isReady)
	for _, body := range notJSON {
		status, answer := invokeWith(t, a.url, "function-token", body)
		if status != 200 || answer != string(body) {
			t.Errorf("body %q: %d %q, want it echoed by the function", body, status, answer)
		}
	}
	if got := a.pool.metrics.invalidRequest.Load(); got != 0 {
		t.Errorf("invalid requests counted %d, want 0", got)
	}
	// Anyone else is refused before the body is read (TestAdminEndpointsNeedThePodsToken).
	if status, _ := invokeWith(t, a.url, "other", notJSON[0]); status != http.StatusUnauthorized {
		t.Errorf("another token: %d, want 401", status)
	}
}
