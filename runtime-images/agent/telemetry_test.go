package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// telemetryExtension is the fake extension's "telemetry" mode: a Telemetry API subscriber with its own
// HTTP listener, appending every event it receives, as one JSON line, to out.
func telemetryExtension(out string) {
	base := "http://" + os.Getenv("AWS_LAMBDA_RUNTIME_API")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		os.Exit(7)
	}
	f, err := os.OpenFile(out, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		os.Exit(7)
	}
	go func() {
		_ = http.Serve(ln, http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			var batch []json.RawMessage
			if err := json.NewDecoder(r.Body).Decode(&batch); err != nil {
				rw.WriteHeader(400)
				return
			}
			for _, ev := range batch {
				_, _ = f.Write(append(ev, '\n'))
			}
		}))
	}()
	req, _ := http.NewRequest("POST", base+"/2020-01-01/extension/register", strings.NewReader(`{"events":["INVOKE","SHUTDOWN"]}`))
	req.Header.Set("Lambda-Extension-Name", os.Getenv("AGENT_TEST_EXT_NAME"))
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		os.Exit(5)
	}
	resp.Body.Close()
	id := resp.Header.Get("Lambda-Extension-Identifier")
	sub := fmt.Sprintf(`{"schemaVersion":"2022-12-13","types":["platform","function"],"buffering":{"timeoutMs":25},`+
		`"destination":{"protocol":"HTTP","URI":"http://sandbox.localdomain:%d/telemetry"}}`, ln.Addr().(*net.TCPAddr).Port)
	req, _ = http.NewRequest("PUT", base+"/2022-07-01/telemetry", strings.NewReader(sub))
	req.Header.Set("Lambda-Extension-Identifier", id)
	resp, err = http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		os.Exit(8)
	}
	resp.Body.Close()
	fmt.Println("telemetry extension subscribed") // an extension log line, which it did not subscribe to
	for {
		req, _ := http.NewRequest("GET", base+"/2020-01-01/extension/event/next", nil)
		req.Header.Set("Lambda-Extension-Identifier", id)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			os.Exit(6)
		}
		var ev struct{ EventType string }
		_ = json.NewDecoder(resp.Body).Decode(&ev)
		resp.Body.Close()
		if ev.EventType == "SHUTDOWN" {
			os.Exit(0)
		}
	}
}

type telEvent struct {
	Time   string          `json:"time"`
	Type   string          `json:"type"`
	Record json.RawMessage `json:"record"`
}

func readEvents(t *testing.T, path string) []telEvent {
	t.Helper()
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var evs []telEvent
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var ev telEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			continue // a line being written
		}
		evs = append(evs, ev)
	}
	return evs
}

func requestID(ev telEvent) string {
	var r struct {
		RequestID string `json:"requestId"`
	}
	_ = json.Unmarshal(ev.Record, &r)
	return r.RequestID
}

// A Telemetry API subscriber gets the init events, then for every invocation platform.start,
// platform.runtimeDone and platform.report (with Lambda's metrics), and the function's log lines.
func TestTelemetrySubscriber(t *testing.T) {
	dir := extDir(t, map[string]string{"tel": "telemetry"})
	out := filepath.Join(dir, "tel.out")
	a := startAgentWith(t, 1, 5*time.Second, "echo", func(c *Config) { c.ExtensionsDir = dir })
	waitFor(t, "readiness", a.pool.isReady)
	ids := []string{"t1", "t2", "t3"}
	for _, id := range ids {
		if resp, body := invokeID(t, a, id, `{}`); resp.StatusCode != 200 || body != `{}` {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
	}
	waitFor(t, "platform.report t3", func() bool {
		for _, ev := range readEvents(t, out) {
			if ev.Type == "platform.report" && requestID(ev) == "t3" {
				return true
			}
		}
		return false
	})
	evs := readEvents(t, out)
	pos := map[string]int{}
	var functionLines []string
	for i, ev := range evs {
		key := ev.Type
		if id := requestID(ev); id != "" {
			key += " " + id
		}
		if _, dup := pos[key]; dup && ev.Type != "function" {
			t.Errorf("%s delivered twice", key)
		}
		pos[key] = i
		if ev.Type == "function" {
			var line string
			_ = json.Unmarshal(ev.Record, &line)
			functionLines = append(functionLines, line)
		}
		if ev.Type == "extension" {
			t.Errorf("an extension log line, not subscribed to, was delivered: %s", ev.Record)
		}
	}
	// The runtime starts once the extension has registered, so its initRuntimeDone may come before or after the
	// extension's subscription; every other pair is ordered.
	orders := [][]string{
		{"platform.initStart", "platform.extension", "platform.telemetrySubscription", "platform.initReport"},
		{"platform.extension", "platform.initRuntimeDone", "platform.initReport"},
	}
	tail := []string{"platform.initReport"}
	for _, id := range ids {
		tail = append(tail, "platform.start "+id, "platform.runtimeDone "+id, "platform.report "+id)
	}
	for _, order := range append(orders, tail) {
		last := -1
		for _, key := range order {
			i, ok := pos[key]
			if !ok {
				t.Errorf("no %s event", key)
				continue
			}
			if i < last {
				t.Errorf("%s came out of order in %v", key, order)
			}
			last = i
		}
	}
	joined := strings.Join(functionLines, "\n")
	for _, id := range ids {
		if !strings.Contains(joined, "handling "+id) {
			t.Errorf("the function's line for %s is missing from %q", id, joined)
		}
	}
	if strings.Contains(joined, "RequestId:") {
		t.Errorf("platform lines in the function stream: %q", joined)
	}
	var report struct {
		RequestID string `json:"requestId"`
		Status    string `json:"status"`
		Metrics   struct {
			DurationMs       *float64 `json:"durationMs"`
			BilledDurationMs *int     `json:"billedDurationMs"`
			MemorySizeMB     int      `json:"memorySizeMB"`
			MaxMemoryUsedMB  *int     `json:"maxMemoryUsedMB"`
			InitDurationMs   *float64 `json:"initDurationMs"`
		} `json:"metrics"`
	}
	if err := json.Unmarshal(evs[pos["platform.report t1"]].Record, &report); err != nil {
		t.Fatal(err)
	}
	m := report.Metrics
	if report.Status != "success" || m.DurationMs == nil || m.BilledDurationMs == nil || *m.BilledDurationMs < 1 ||
		m.MemorySizeMB != 128 || m.MaxMemoryUsedMB == nil || m.InitDurationMs == nil {
		t.Errorf("platform.report t1: %s", evs[pos["platform.report t1"]].Record)
	}
	if _, err := time.Parse("2006-01-02T15:04:05.000Z", evs[0].Time); err != nil {
		t.Errorf("time %q: %v", evs[0].Time, err)
	}
}

func TestSubscriptionValidation(t *testing.T) {
	ok := `"destination":{"protocol":"HTTP","URI":"http://sandbox.localdomain:4243/x"}`
	for body, want := range map[string]string{
		`{"schemaVersion":"2021-01-01","types":["platform"],` + ok + `}`:                                                       "schemaVersion",
		`{"schemaVersion":"2022-07-01","types":[],` + ok + `}`:                                                                 "types",
		`{"schemaVersion":"2022-07-01","types":["logs"],` + ok + `}`:                                                           "types",
		`{"schemaVersion":"2022-07-01","types":["platform"],"buffering":{"maxItems":5},` + ok + `}`:                            "buffering.maxItems",
		`{"schemaVersion":"2022-07-01","types":["platform"],"buffering":{"timeoutMs":5},` + ok + `}`:                           "buffering.timeoutMs",
		`{"schemaVersion":"2022-07-01","types":["platform"]}`:                                                                  "destination",
		`{"schemaVersion":"2022-07-01","types":["platform"],"destination":{"protocol":"TCP","URI":"http://localhost:1"}}`:      "destination.protocol",
		`{"schemaVersion":"2022-07-01","types":["platform"],"destination":{"protocol":"HTTP","URI":"http://example.com:80/"}}`: "destination.URI",
	} {
		var req subscribeRequest
		if err := json.Unmarshal([]byte(body), &req); err != nil {
			t.Fatal(err)
		}
		if s, msg := newSubscription("x", &req); s != nil || !strings.HasPrefix(msg, want) {
			t.Errorf("%s: %q, want it to name %s", body, msg, want)
		}
	}
	var req subscribeRequest
	_ = json.Unmarshal([]byte(`{"schemaVersion":"2022-12-13","types":["platform","function"],"buffering":{"maxItems":1000,"maxBytes":262144,"timeoutMs":25},`+ok+`}`), &req)
	s, msg := newSubscription("x", &req)
	if s == nil || s.uri != "http://127.0.0.1:4243/x" || s.maxItems != 1000 || s.timeout != 25*time.Millisecond {
		t.Errorf("good request: %+v %s", s, msg)
	}
}

func TestTelemetryUnknownExtension(t *testing.T) {
	a := startAgent(t, 1, 5*time.Second, "echo")
	waitFor(t, "readiness", a.pool.isReady)
	req, _ := http.NewRequest("PUT", "http://"+a.pool.workers[0].addr+"/2022-07-01/telemetry", strings.NewReader(`{}`))
	req.Header.Set("Lambda-Extension-Identifier", "nobody")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 403 || !strings.Contains(string(b), "Telemetry.UnknownExtensionIdentifier") {
		t.Errorf("%d %s", resp.StatusCode, b)
	}
}
