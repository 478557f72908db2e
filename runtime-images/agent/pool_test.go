package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The test binary doubles as a tiny runtime: with AGENT_TEST_FAKE_RUNTIME set it serves the
// Runtime API loop, acting on the event: {"sleep_ms": N}, {"crash": true}, {"fail": true},
// {"big": N} (answers N bytes); any other event is echoed, or answered with AGENT_TEST_ANSWER when that is
// set. AGENT_TEST_FAKE_RUNTIME=initerr reports an init error and exits;
// =exit exits before asking for an event.
func TestMain(m *testing.M) {
	if os.Getenv("AGENT_TEST_FAKE_EXTENSION") != "" { // extensions_test.go
		fakeExtension()
		return
	}
	switch os.Getenv("AGENT_TEST_FAKE_RUNTIME") {
	case "internal": // extensions_test.go
		internalExtension()
		fakeRuntime()
	case "":
		os.Exit(m.Run())
	case "initerr":
		base := "http://" + os.Getenv("AWS_LAMBDA_RUNTIME_API") + "/2018-06-01/runtime"
		req, _ := http.NewRequest("POST", base+"/init/error", strings.NewReader(`{"errorType":"Runtime.ImportModuleError","errorMessage":"Unable to import module 'app'"}`))
		req.Header.Set("Lambda-Runtime-Function-Error-Type", "Runtime.ImportModuleError")
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
		os.Exit(1)
	case "exit":
		os.Exit(3)
	case "exitidle": // initialises, then dies while waiting for an event
		// It dies a moment after its first "next" went out, so that the agent has seen it initialise (a fixed
		// delay from the start lost that race on a loaded machine: an init failure parks the worker).
		http.DefaultTransport.(*http.Transport).DisableKeepAlives = true
		trace := &httptrace.ClientTrace{WroteRequest: func(httptrace.WroteRequestInfo) {
			go func() {
				time.Sleep(100 * time.Millisecond)
				os.Exit(4)
			}()
		}}
		resp, err := http.DefaultClient.Do(mustRequest(httptrace.WithClientTrace(context.Background(), trace),
			"http://"+os.Getenv("AWS_LAMBDA_RUNTIME_API")+"/2018-06-01/runtime/invocation/next"))
		if err == nil {
			resp.Body.Close()
		}
		select {}
	case "slowinit": // initialises for AGENT_TEST_INIT_MS before its first "next"
		ms, _ := strconv.Atoi(os.Getenv("AGENT_TEST_INIT_MS"))
		time.Sleep(time.Duration(ms) * time.Millisecond)
		fakeRuntime()
	default:
		fakeRuntime()
	}
}

func mustRequest(ctx context.Context, url string) *http.Request {
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		panic(err)
	}
	return req
}

func fakeRuntime() {
	if os.Getenv("KUBELAMBDA_AWAIT_SPECIALIZATION") == "1" {
		awaitFunction()
	}
	base := "http://" + os.Getenv("AWS_LAMBDA_RUNTIME_API") + "/2018-06-01/runtime"
	var answer []byte
	if a, ok := os.LookupEnv("AGENT_TEST_ANSWER"); ok {
		answer = []byte(a)
	}
	for {
		resp, err := http.Get(base + "/invocation/next")
		if err != nil {
			os.Exit(2)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		id := resp.Header.Get("Lambda-Runtime-Aws-Request-Id")
		var ev struct {
			SleepMs int    `json:"sleep_ms"`
			Crash   bool   `json:"crash"`
			Fail    bool   `json:"fail"`
			Big     int    `json:"big"`
			File    string `json:"file"`
			Env     string `json:"env"`
			Cwd     bool   `json:"cwd"`
		}
		_ = json.Unmarshal(body, &ev)
		fmt.Printf("handling %s\n", id) // must come out between START and END
		time.Sleep(time.Duration(ev.SleepMs) * time.Millisecond)
		switch {
		case ev.Crash:
			os.Exit(7)
		case ev.Fail:
			r, _ := http.Post(base+"/invocation/"+id+"/error", "application/json",
				strings.NewReader(`{"errorType":"ValueError","errorMessage":"boom","stackTrace":[]}`))
			r.Body.Close()
		case ev.File != "" || ev.Env != "" || ev.Cwd:
			var out []byte
			if ev.Cwd {
				wd, _ := os.Getwd()
				out = []byte(wd)
			} else if ev.File != "" {
				out, _ = os.ReadFile(filepath.Join(os.Getenv("LAMBDA_TASK_ROOT"), ev.File))
			} else {
				out = []byte(os.Getenv(ev.Env))
			}
			b, _ := json.Marshal(string(out))
			r, _ := http.Post(base+"/invocation/"+id+"/response", "application/json", bytes.NewReader(b))
			r.Body.Close()
		case ev.Big > 0:
			r, _ := http.Post(base+"/invocation/"+id+"/response", "application/json",
				bytes.NewReader(bytes.Repeat([]byte("x"), ev.Big)))
			r.Body.Close()
		default:
			if answer != nil { // AGENT_TEST_ANSWER: a fixed answer, as a bridge's handler gives
				body = answer
			}
			r, _ := http.Post(base+"/invocation/"+id+"/response", "application/json", bytes.NewReader(body))
			_, _ = io.Copy(io.Discard, r.Body) // read to the end, or the connection is not used again
			r.Body.Close()
		}
	}
}

type testAgent struct {
	pool *pool
	url  string
	out  *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startAgent(t *testing.T, workers int, timeout time.Duration, mode string) *testAgent {
	t.Helper()
	return startAgentWith(t, workers, timeout, mode, nil)
}

// startAgentWith is startAgent with a last say on the configuration.
func startAgentWith(t testing.TB, workers int, timeout time.Duration, mode string, edit func(*Config)) *testAgent {
	t.Helper()
	return startAgentLogging(t, &syncBuffer{}, workers, timeout, mode, edit)
}

// startAgentLogging is startAgentWith writing the agent's log to out (a benchmark's /dev/null).
func startAgentLogging(t testing.TB, out io.Writer, workers int, timeout time.Duration, mode string, edit func(*Config)) *testAgent {
	t.Helper()
	t.Setenv("AGENT_TEST_FAKE_RUNTIME", mode)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cfg := &Config{Workers: workers, Timeout: timeout, MemoryMB: 128, FunctionName: "fn", FunctionVersion: "$LATEST",
		FunctionARN: "arn:aws:lambda:us-east-1:000000000000:function:fn", TaskRoot: t.TempDir(),
		RuntimeCmd: []string{exe}, MaxRequest: 1 << 16, MaxResponse: 1 << 16}
	if edit != nil {
		edit(cfg)
	}
	var p *pool
	var servers []*http.Server
	for attempt := 0; ; attempt++ {
		cfg.RuntimeAPI = fmt.Sprintf("127.0.0.1:%d", 20000+rand.IntN(30000))
		p = newPool(cfg, newLogger(out, out), newMetrics(workers))
		if servers, err = serveRuntimeAPI(p); err == nil {
			break
		} else if attempt > 20 {
			t.Fatal(err)
		}
	}
	front := httptest.NewServer(newFrontMux(cfg, p, p.metrics, newSpecializer(cfg, p, p.log)))
	p.start()
	t.Cleanup(func() {
		p.stop()
		front.Close()
		for _, s := range servers {
			_ = s.Close()
		}
	})
	buf, _ := out.(*syncBuffer)
	return &testAgent{pool: p, url: front.URL, out: buf}
}

func (a *testAgent) invoke(t *testing.T, body string) (*http.Response, string) {
	t.Helper()
	resp, err := http.Post(a.url+"/invoke", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// waitFor polls cond until it holds or 30 s pass (generous: the race detector on a loaded two-core machine).
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestInvokeOutcomes(t *testing.T) {
	a := startAgent(t, 1, 2*time.Second, "echo")
	waitFor(t, "readiness", a.pool.isReady)
	tests := []struct {
		name, body   string
		status       int
		outcome      string
		funcErr      bool
		bodyContains string
	}{
		{"echo", `{"a":"é"}`, 200, "success", false, `{"a":"é"}`},
		{"empty payload is {}", ``, 200, "success", false, `{}`},
		{"function error", `{"fail":true}`, 200, "function_error", true, `"errorType":"ValueError"`},
		{"crash", `{"crash":true}`, 200, "crash", true, `Runtime.ExitError`},
		{"after a crash", `{"n":1}`, 200, "success", false, `{"n":1}`},
		{"timeout", `{"sleep_ms":5000}`, 200, "timeout", true, `Task timed out after 2.00 seconds`},
		{"after a timeout", `{"n":2}`, 200, "success", false, `{"n":2}`},
		{"not json", `hello`, 400, "", false, `InvalidRequestContentException`},
		{"request too large", `"` + strings.Repeat("x", 1<<16) + `"`, 413, "", false, `RequestTooLargeException`},
		{"response too large", `{"big":70000}`, 200, "response_too_large", true, `Function.ResponseSizeTooLarge`},
		{"response at the limit", `{"big":65536}`, 200, "success", false, `xxx`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := a.invoke(t, tt.body)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, body %s", resp.StatusCode, body)
			}
			if got := resp.Header.Get("X-Kubelambda-Outcome"); got != tt.outcome {
				t.Errorf("outcome %q, want %q", got, tt.outcome)
			}
			if got := resp.Header.Get("X-Amz-Function-Error") == "Unhandled"; got != tt.funcErr {
				t.Errorf("function error header = %v", got)
			}
			if !strings.Contains(body, tt.bodyContains) && resp.Header.Get("X-Amzn-Errortype") != tt.bodyContains {
				t.Errorf("body %.200s does not contain %q", body, tt.bodyContains)
			}
		})
	}
	if got := a.pool.metrics.restarts.Load(); got != 2 {
		t.Errorf("restarts = %d, want 2 (crash and timeout)", got)
	}
	logs := a.out.String()
	for _, want := range []string{"START RequestId: ", "END RequestId: ", "Status: timeout", "Init Duration: "} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q:\n%s", want, logs)
		}
	}
}

func TestConcurrencyRefusal(t *testing.T) {
	a := startAgent(t, 2, 5*time.Second, "echo")
	waitFor(t, "readiness", a.pool.isReady)
	var wg sync.WaitGroup
	codes := make([]int, 2)
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, _ := a.invoke(t, `{"sleep_ms":500}`)
			codes[i] = resp.StatusCode
		}()
	}
	waitFor(t, "two invocations in flight", func() bool { return a.pool.metrics.inflight.Load() == 2 })
	resp, body := a.invoke(t, `{}`)
	if resp.StatusCode != 429 || resp.Header.Get("X-Amzn-Errortype") != "TooManyRequestsException" ||
		resp.Header.Get("X-Kubelambda-Outcome") != "refused_busy" {
		t.Errorf("third call: %d %v %s", resp.StatusCode, resp.Header, body)
	}
	wg.Wait()
	if codes[0] != 200 || codes[1] != 200 {
		t.Errorf("in-flight calls answered %v", codes)
	}
}

func TestInitError(t *testing.T) {
	for _, mode := range []string{"initerr", "exit"} {
		t.Run(mode, func(t *testing.T) {
			a := startAgent(t, 1, 2*time.Second, mode)
			waitFor(t, "init to finish", a.pool.isReady)
			want := map[string]string{"initerr": "Runtime.ImportModuleError", "exit": "Runtime.ExitError"}[mode]
			for range 2 {
				resp, body := a.invoke(t, `{}`)
				if resp.StatusCode != 200 || resp.Header.Get("X-Kubelambda-Outcome") != "init_error" ||
					resp.Header.Get("X-Amz-Function-Error") != "Unhandled" || !strings.Contains(body, want) {
					t.Errorf("%d %v %s", resp.StatusCode, resp.Header, body)
				}
			}
		})
	}
}

func TestDrain(t *testing.T) {
	a := startAgent(t, 1, 5*time.Second, "echo")
	waitFor(t, "readiness", a.pool.isReady)
	done := make(chan int)
	go func() {
		resp, _ := a.invoke(t, `{"sleep_ms":300}`)
		done <- resp.StatusCode
	}()
	waitFor(t, "the invocation in flight", func() bool { return a.pool.metrics.inflight.Load() == 1 })
	drained := make(chan bool)
	go func() { drained <- a.pool.drain(5 * time.Second) }()
	waitFor(t, "draining", func() bool { return !a.pool.isReady() })
	if resp, _ := a.invoke(t, `{}`); resp.StatusCode != 503 {
		t.Errorf("invoke while draining answered %d", resp.StatusCode)
	}
	if code := <-done; code != 200 {
		t.Errorf("in-flight invocation answered %d", code)
	}
	if !<-drained {
		t.Error("drain timed out")
	}
}

func TestMetricsEndpoint(t *testing.T) {
	a := startAgent(t, 1, 2*time.Second, "echo")
	waitFor(t, "readiness", a.pool.isReady)
	a.invoke(t, `{}`)
	var b []byte
	scrape := func() bool {
		resp, err := http.Get(a.url + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		return strings.Contains(string(b), "kubelambda_agent_max_memory_used_megabytes_count 1")
	}
	// The REPORT (and what it counts) follows the answer: the caller may read the metrics before it.
	waitFor(t, "the REPORT's Max Memory Used in the metrics", scrape)
	for _, want := range []string{
		`kubelambda_agent_invocations_total{outcome="success"} 1`,
		`kubelambda_agent_invocation_duration_seconds_count 1`,
		`kubelambda_agent_init_duration_seconds_count 1`,
		`kubelambda_agent_inflight_invocations 0`,
		`kubelambda_agent_timeouts_total 0`,
		`kubelambda_agent_worker_restarts_total 0`,
		`kubelambda_agent_max_memory_used_megabytes_count 1`,
		`kubelambda_agent_memory_size_megabytes 128`,
		`kubelambda_agent_oom_kills_total 0`,
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

func TestLogOrderAndTail(t *testing.T) {
	a := startAgent(t, 1, 2*time.Second, "echo")
	waitFor(t, "readiness", a.pool.isReady)
	req, _ := http.NewRequest("POST", a.url+"/invoke", strings.NewReader(`{}`))
	req.Header.Set("X-Amz-Log-Type", "Tail")
	req.Header.Set("Lambda-Runtime-Aws-Request-Id", "req-1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	tail, err := base64.StdEncoding.DecodeString(resp.Header.Get("X-Amz-Log-Result"))
	if err != nil {
		t.Fatal(err)
	}
	want := regexp.MustCompile(`^START RequestId: req-1 Version: \$LATEST\nhandling req-1\nEND RequestId: req-1\nREPORT RequestId: req-1\t[^\n]*\n$`)
	if !want.Match(tail) {
		t.Errorf("log tail %q", tail)
	}
	for range 20 { // without Tail, the order holds on the agent's stdout too
		a.invoke(t, `{}`)
	}
	waitFor(t, "the last REPORT", func() bool { return strings.Count(a.out.String(), "REPORT RequestId") == 21 })
	var last string
	for _, line := range strings.Split(a.out.String(), "\n") {
		if strings.HasPrefix(line, "handling ") && !strings.HasPrefix(last, "START RequestId: ") {
			t.Errorf("%q follows %q, not its START line", line, last)
		}
		if strings.HasPrefix(line, "END ") && !strings.HasPrefix(last, "handling ") {
			t.Errorf("%q follows %q", line, last)
		}
		last = line
	}
}

func TestQuickExitsBackOff(t *testing.T) {
	a := startAgent(t, 1, 2*time.Second, "exitidle")
	start := time.Now()
	waitFor(t, "three restarts", func() bool { return a.pool.metrics.restarts.Load() >= 3 })
	// 50 + 100 ms of back-off at least between the three restarts, instead of a busy loop.
	if elapsed := time.Since(start); elapsed < 150*time.Millisecond {
		t.Errorf("three restarts took only %v", elapsed)
	}
}

// Like Lambda's Init phase, a runtime's init does not count toward the function's timeout: an invocation that
// waits for it gets the whole timeout once the runtime takes it, unless the caller set its own deadline, and it
// waits at most initWaitLimit for the init.
func TestInitWaitDoesNotCountTowardTheTimeout(t *testing.T) {
	t.Setenv("AGENT_TEST_INIT_MS", "1500")
	a := startAgent(t, 1, 500*time.Millisecond, "slowinit")
	if resp, body := a.invoke(t, `{"a":1}`); resp.Header.Get("X-Kubelambda-Outcome") != "success" || body != `{"a":1}` {
		t.Fatalf("waiting for a 1.5 s init with a 0.5 s timeout: %v %s", resp.Header, body)
	}

	t.Run("the caller's deadline holds", func(t *testing.T) {
		t.Setenv("AGENT_TEST_INIT_MS", "1500")
		a := startAgent(t, 1, 500*time.Millisecond, "slowinit")
		req, _ := http.NewRequest("POST", a.url+"/invoke", strings.NewReader(`{}`))
		req.Header.Set("Lambda-Runtime-Deadline-Ms", strconv.FormatInt(time.Now().Add(500*time.Millisecond).UnixMilli(), 10))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := resp.Header.Get("X-Kubelambda-Outcome"); got != "timeout" {
			t.Errorf("outcome %q, want timeout", got)
		}
	})

	t.Run("the init wait is bounded", func(t *testing.T) {
		defer func(d time.Duration) { initWaitLimit = d }(initWaitLimit)
		initWaitLimit = 200 * time.Millisecond
		t.Setenv("AGENT_TEST_INIT_MS", "3000")
		a := startAgent(t, 1, 300*time.Millisecond, "slowinit")
		if resp, body := a.invoke(t, `{}`); resp.Header.Get("X-Kubelambda-Outcome") != "timeout" {
			t.Errorf("a 3 s init with a 0.2 s wait limit and a 0.3 s timeout: %v %s", resp.Header, body)
		}
	})
}

// Each REPORT's Max Memory Used goes to a histogram in MB, and an OOM kill to its counter.
func TestReportMetrics(t *testing.T) {
	m := newMetrics(1)
	m.report(reportInfo{maxMemMB: 40})
	m.report(reportInfo{maxMemMB: 128, errType: "Runtime.OutOfMemory"})
	m.report(reportInfo{}) // answered without a worker: no memory figure
	rec := httptest.NewRecorder()
	m.serveHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, want := range []string{
		`kubelambda_agent_max_memory_used_megabytes_bucket{le="32"} 0`,
		`kubelambda_agent_max_memory_used_megabytes_bucket{le="64"} 1`,
		`kubelambda_agent_max_memory_used_megabytes_bucket{le="128"} 2`,
		`kubelambda_agent_max_memory_used_megabytes_sum 168`,
		`kubelambda_agent_max_memory_used_megabytes_count 2`,
		`kubelambda_agent_oom_kills_total 1`,
	} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("metrics lack %q:\n%s", want, rec.Body.String())
		}
	}
}
