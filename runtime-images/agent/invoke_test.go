package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
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

// What a warm invocation costs the agent: events of 1, 100 and 1,000 stream records (0.5, 52 and 527 KB, as the
// PostgreSQL bridge sends them at those batch sizes) posted to /invoke one at a time over one kept-alive
// connection with the gateway's token, to one worker whose runtime (this binary's fake runtime, another process)
// answers {} as a bridge's handler does. The log goes to /dev/null. Reported beside ns/op (which counts the
// runtime's turn too): cpu_us/op, this process's CPU per invocation from getrusage: the agent plus the client, a
// raw socket writing prepared bytes and reading the answer. The floor (floor/records=N) is the same client and
// body against a server of the same HTTP stack that only reads the body (into one buffer) and answers {}: the
// agent's own cost is agent - floor.
// For a profile: go test -run '^$' -bench 'Invoke/agent' -benchtime 5000x -cpuprofile /tmp/agent.prof
func BenchmarkInvoke(b *testing.B) {
	for _, records := range []int{1, 100, 1000} {
		body := streamBatch(records)
		b.Run(fmt.Sprintf("agent/records=%d", records), func(b *testing.B) {
			b.Setenv(agentTokenEnv, "bench-token")
			b.Setenv("AGENT_TEST_ANSWER", "{}")
			devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
			if err != nil {
				b.Fatal(err)
			}
			defer devnull.Close()
			a := startAgentLogging(b, devnull, 1, time.Minute, "answer", func(c *Config) {
				c.MaxRequest, c.MaxResponse = 6<<20, 6<<20
			})
			waitFor(b, "readiness", a.pool.isReady)
			benchInvokes(b, a.url, body)
		})
		b.Run(fmt.Sprintf("floor/records=%d", records), func(b *testing.B) {
			buf := make([]byte, len(body))
			srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
				if _, err := io.ReadFull(r.Body, buf); err != nil {
					b.Error(err)
				}
				_, _ = rw.Write([]byte("{}"))
			}))
			defer srv.Close()
			benchInvokes(b, srv.URL, body)
		})
	}
}

// benchInvokes posts body to url's /invoke b.N times over one connection and reports cpu_us/op.
func benchInvokes(b *testing.B, url string, body []byte) {
	conn, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	req := []byte("POST /invoke HTTP/1.1\r\nHost: agent\r\nAuthorization: Bearer bench-token\r\n" +
		"Content-Type: application/json\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + string(body))
	br := bufio.NewReader(conn)
	call := func() {
		if _, err := conn.Write(req); err != nil {
			b.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			b.Fatal(err)
		}
		answer, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(answer) != "{}" {
			b.Fatalf("%d %s: %.200s", resp.StatusCode, resp.Header.Get("X-Kubelambda-Outcome"), answer)
		}
	}
	for range 50 { // warm: connections, buffers, the runtime's first calls
		call()
	}
	b.SetBytes(int64(len(body)))
	var before, after syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	b.ResetTimer()
	for b.Loop() {
		call()
	}
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &after)
	cpu := time.Duration(after.Utime.Nano() + after.Stime.Nano() - before.Utime.Nano() - before.Stime.Nano())
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N)/1000, "cpu_us/op")
}
