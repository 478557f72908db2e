package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The test binary doubles as an external extension written against the Extensions API: with
// AGENT_TEST_FAKE_EXTENSION set (by a wrapper script in the extensions folder) it registers as
// AGENT_TEST_EXT_NAME and appends a line per event to AGENT_TEST_EXT_OUT. Modes:
//
//	record   INVOKE and SHUTDOWN, calls next again at once
//	hold     as record, but after INVOKE <id> waits for the file AGENT_TEST_EXT_OUT.release.<id>
//	initerr  registers, reports an init error, exits 1
//	crash    exits 3 without registering
//	silent   never registers
func fakeExtension() {
	mode := os.Getenv("AGENT_TEST_FAKE_EXTENSION")
	out := os.Getenv("AGENT_TEST_EXT_OUT")
	record := func(line string) {
		f, err := os.OpenFile(out, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err == nil {
			_, _ = f.WriteString(line + "\n")
			f.Close()
		}
	}
	switch mode {
	case "crash":
		os.Exit(3)
	case "silent":
		select {}
	case "telemetry":
		telemetryExtension(out)
		return
	}
	base := "http://" + os.Getenv("AWS_LAMBDA_RUNTIME_API") + "/2020-01-01/extension"
	req, _ := http.NewRequest("POST", base+"/register", strings.NewReader(`{"events":["INVOKE","SHUTDOWN"]}`))
	req.Header.Set("Lambda-Extension-Name", os.Getenv("AGENT_TEST_EXT_NAME"))
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		os.Exit(5)
	}
	resp.Body.Close()
	id := resp.Header.Get("Lambda-Extension-Identifier")
	record("REGISTERED")
	if mode == "initerr" {
		req, _ := http.NewRequest("POST", base+"/init/error", strings.NewReader(`{"errorMessage":"cannot reach the collector"}`))
		req.Header.Set("Lambda-Extension-Identifier", id)
		req.Header.Set("Lambda-Extension-Function-Error-Type", "Fatal.ConnectFailed")
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
		os.Exit(1)
	}
	for {
		req, _ := http.NewRequest("GET", base+"/event/next", nil)
		req.Header.Set("Lambda-Extension-Identifier", id)
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != 200 {
			os.Exit(6) // as the API asks: an error answer means exit
		}
		var ev struct {
			EventType      string `json:"eventType"`
			RequestID      string `json:"requestId"`
			ShutdownReason string `json:"shutdownReason"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&ev)
		resp.Body.Close()
		if ev.EventType == "SHUTDOWN" {
			record("SHUTDOWN " + ev.ShutdownReason)
			os.Exit(0)
		}
		record("INVOKE " + ev.RequestID)
		if mode == "hold" {
			for {
				if _, err := os.Stat(out + ".release." + ev.RequestID); err == nil {
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
			record("DONE " + ev.RequestID)
		}
	}
}

// internalExtension runs in the fake runtime ("internal" mode) before its Runtime API loop: it
// registers an internal extension for INVOKE and records its events in AGENT_TEST_EXT_OUT, and records
// the status of an attempt to register one for SHUTDOWN (which Lambda refuses).
func internalExtension() {
	base := "http://" + os.Getenv("AWS_LAMBDA_RUNTIME_API") + "/2020-01-01/extension"
	out := os.Getenv("AGENT_TEST_EXT_OUT")
	register := func(name, events string) (string, int) {
		req, _ := http.NewRequest("POST", base+"/register", strings.NewReader(events))
		req.Header.Set("Lambda-Extension-Name", name)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			os.Exit(5)
		}
		resp.Body.Close()
		return resp.Header.Get("Lambda-Extension-Identifier"), resp.StatusCode
	}
	_, status := register("internal-shutdown", `{"events":["SHUTDOWN"]}`)
	lines := make(chan string, 100)
	lines <- fmt.Sprintf("SHUTDOWN-REGISTRATION %d", status)
	id, status := register("internal-invoke", `{"events":["INVOKE"]}`)
	if status != 200 {
		os.Exit(5)
	}
	go func() {
		for line := range lines {
			f, _ := os.OpenFile(out, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
			_, _ = f.WriteString(line + "\n")
			f.Close()
		}
	}()
	go func() {
		for {
			req, _ := http.NewRequest("GET", base+"/event/next", nil)
			req.Header.Set("Lambda-Extension-Identifier", id)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return
			}
			var ev struct{ EventType, RequestID string }
			_ = json.NewDecoder(resp.Body).Decode(&ev)
			resp.Body.Close()
			lines <- ev.EventType + " " + ev.RequestID
		}
	}()
}

// extDir makes an extensions folder with one wrapper script per name that runs the test binary as the
// fake extension in the given mode, recording into dir/<name>.out.
func extDir(t *testing.T, modes map[string]string) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for name, mode := range modes {
		script := fmt.Sprintf("#!/bin/sh\nAGENT_TEST_FAKE_EXTENSION=%s AGENT_TEST_EXT_NAME=%s AGENT_TEST_EXT_OUT=%s exec %s\n",
			mode, name, filepath.Join(dir, name+".out"), exe)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return strings.Fields(strings.ReplaceAll(strings.TrimSpace(string(b)), " ", "_"))
}

// expectLines waits (up to 10 s) for the file at path to hold exactly want, space-joined (spaces within a
// line read as _), since an extension records an event after the agent sent it.
func expectLines(t *testing.T, path, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := strings.Join(readLines(t, path), " ")
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%s holds\n%s\nwant\n%s", filepath.Base(path), got, want)
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func invokeID(t *testing.T, a *testAgent, id, body string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", a.url+"/invoke", strings.NewReader(body))
	req.Header.Set("Lambda-Runtime-Aws-Request-Id", id)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

var reportDuration = regexp.MustCompile(`REPORT RequestId: (\S+)\tDuration: ([0-9.]+) ms`)

// reportMs is the Duration of id's REPORT line, or -1 when there is none yet.
func reportMs(logs, id string) float64 {
	for _, m := range reportDuration.FindAllStringSubmatch(logs, -1) {
		if m[1] == id {
			f, _ := strconv.ParseFloat(m[2], 64)
			return f
		}
	}
	return -1
}

// An external extension in Go and one in Python see every invocation's request id, in order, and a
// SHUTDOWN (spindown) when the pod stops.
func TestExtensionsSeeInvokesAndShutdown(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Fatal("python3 is needed for the Python extension: ", err)
	}
	dir := extDir(t, map[string]string{"go-recorder": "record"})
	src, err := os.ReadFile("testdata/recorder_extension.py")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "py-recorder"), src, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("EXT_OUT", filepath.Join(dir, "py-recorder.out"))
	a := startAgentWith(t, 1, 5*time.Second, "echo", func(c *Config) { c.ExtensionsDir = dir })
	waitFor(t, "readiness", a.pool.isReady)
	var want []string
	for i := range 5 {
		id := fmt.Sprintf("req-%d", i)
		resp, body := invokeID(t, a, id, `{"n":1}`)
		if resp.StatusCode != 200 || body != `{"n":1}` {
			t.Fatalf("invoke %s: %d %s", id, resp.StatusCode, body)
		}
		want = append(want, "INVOKE_"+id)
	}
	waitFor(t, "the last REPORT", func() bool { return reportMs(a.out.String(), "req-4") >= 0 })
	a.pool.drain(time.Second)
	a.pool.stop()

	if got, w := strings.Join(readLines(t, filepath.Join(dir, "go-recorder.out")), " "),
		strings.Join(append(append([]string{"REGISTERED"}, want...), "SHUTDOWN_spindown"), " "); got != w {
		t.Errorf("the Go extension saw\n%s\nwant\n%s", got, w)
	}
	var py []string
	for _, l := range readLines(t, filepath.Join(dir, "py-recorder.out")) {
		if strings.HasPrefix(l, "INVOKE_") { // drop the deadline
			l = l[:strings.LastIndexByte(l, '_')]
		}
		py = append(py, l)
	}
	if got, w := strings.Join(py, " "), strings.Join(append(append([]string{"REGISTERED_fn"}, want...), "SHUTDOWN_spindown"), " "); got != w {
		t.Errorf("the Python extension saw\n%s\nwant\n%s", got, w)
	}
	if !strings.Contains(a.out.String(), "Init Duration: ") {
		t.Errorf("no Init Duration in\n%s", a.out.String())
	}
}

// An extension that fails init fails the cold start with Lambda's error type, on every try.
func TestExtensionInitFailures(t *testing.T) {
	defer func(d time.Duration) { extRegisterLimit = d }(extRegisterLimit)
	extRegisterLimit = 2 * time.Second // the silent extension waits it out; the others must register well within it under load
	for mode, want := range map[string]string{
		"initerr": "Extension.InitError", "crash": "Extension.Crash", "silent": "Sandbox.Timedout",
	} {
		t.Run(mode, func(t *testing.T) {
			dir := extDir(t, map[string]string{"ext-" + mode: mode})
			a := startAgentWith(t, 1, 5*time.Second, "echo", func(c *Config) { c.ExtensionsDir = dir })
			waitFor(t, "init to finish", a.pool.isReady)
			for range 2 {
				resp, body := a.invoke(t, `{}`)
				if resp.StatusCode != 200 || resp.Header.Get("X-Kubelambda-Outcome") != "init_error" ||
					resp.Header.Get("X-Amz-Function-Error") != "Unhandled" || !strings.Contains(body, `"errorType":"`+want+`"`) {
					t.Errorf("%d %v %s", resp.StatusCode, resp.Header, body)
				}
				if mode == "initerr" && !strings.Contains(body, "Fatal.ConnectFailed: cannot reach the collector") {
					t.Errorf("the error does not carry the extension's report: %s", body)
				}
			}
		})
	}
}

// The caller gets the response at once; the environment takes its next invocation, and REPORT is
// written, only when the extension has called next again, and REPORT's duration counts that time.
func TestSlowExtensionAfterResponse(t *testing.T) {
	dir := extDir(t, map[string]string{"holder": "hold"})
	out := filepath.Join(dir, "holder.out")
	a := startAgentWith(t, 1, 5*time.Second, "echo", func(c *Config) { c.ExtensionsDir = dir })
	waitFor(t, "readiness", a.pool.isReady)

	resp, body := invokeID(t, a, "r1", `{"a":1}`)
	if resp.StatusCode != 200 || body != `{"a":1}` {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	// The extension holds r1 until released: the answer came without it.
	waitFor(t, "the extension to record r1", func() bool { return len(readLines(t, out)) == 2 })
	if got := readLines(t, out); strings.Join(got, " ") != "REGISTERED INVOKE_r1" {
		t.Fatalf("extension saw %v", got)
	}
	if reportMs(a.out.String(), "r1") >= 0 {
		t.Fatalf("REPORT written while the extension still runs:\n%s", a.out.String())
	}
	second := make(chan string)
	go func() {
		_, body := invokeID(t, a, "r2", `{"a":2}`)
		second <- body
	}()
	time.Sleep(200 * time.Millisecond) // the held time that REPORT must count
	if err := os.WriteFile(out+".release.r1", nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(out+".release.r2", nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if body := <-second; body != `{"a":2}` {
		t.Fatalf("second invoke: %s", body)
	}
	waitFor(t, "REPORT r2", func() bool { return reportMs(a.out.String(), "r2") >= 0 })
	logs := a.out.String()
	if d := reportMs(logs, "r1"); d < 200 {
		t.Errorf("REPORT r1 Duration %.2f ms does not count the extension's 200 ms after the response", d)
	}
	if strings.Index(logs, "REPORT RequestId: r1") > strings.Index(logs, "START RequestId: r2") {
		t.Errorf("r2 started before the extension was done with r1:\n%s", logs)
	}
	expectLines(t, out, "REGISTERED INVOKE_r1 DONE_r1 INVOKE_r2 DONE_r2")
}

// An extension still busy at the invocation's deadline resets the environment: REPORT says timeout, the
// extension gets SHUTDOWN (timeout), and the next invocation runs in a fresh environment.
func TestExtensionPastDeadlineResets(t *testing.T) {
	dir := extDir(t, map[string]string{"holder": "hold"})
	out := filepath.Join(dir, "holder.out")
	a := startAgentWith(t, 1, time.Second, "echo", func(c *Config) { c.ExtensionsDir = dir })
	waitFor(t, "readiness", a.pool.isReady)
	if resp, body := invokeID(t, a, "r1", `{}`); resp.Header.Get("X-Kubelambda-Outcome") != "success" {
		t.Fatalf("%v %s", resp.Header, body)
	}
	waitFor(t, "REPORT r1", func() bool { return reportMs(a.out.String(), "r1") >= 0 })
	if !regexp.MustCompile(`REPORT RequestId: r1\t[^\n]*Status: timeout`).MatchString(a.out.String()) {
		t.Errorf("REPORT r1 is not a timeout:\n%s", a.out.String())
	}
	if err := os.WriteFile(out+".release.r2", nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// The reset takes up to the 2 s shutdown limit (the held extension never answers its SHUTDOWN).
	waitFor(t, "the fresh extension", func() bool { return strings.Count(strings.Join(readLines(t, out), " "), "REGISTERED") == 2 })
	if resp, body := invokeID(t, a, "r2", `{"b":2}`); body != `{"b":2}` {
		t.Fatalf("after the reset: %v %s", resp.Header, body)
	}
	// The held extension never calls next again, so it never reads its SHUTDOWN and is killed after the
	// shutdown limit; the fresh one registers and sees r2.
	expectLines(t, out, "REGISTERED INVOKE_r1 REGISTERED INVOKE_r2 DONE_r2")
}

// An extension that crashes after init resets the environment: the other extension gets SHUTDOWN
// (failure), and the next invocation runs in a fresh environment.
func TestExtensionCrashResets(t *testing.T) {
	// The SHUTDOWN must reach the other extension and be recorded: on a loaded machine that may take more
	// than Lambda's 2 s.
	defer func(d time.Duration) { extShutdownLimit = d }(extShutdownLimit)
	extShutdownLimit = 10 * time.Second
	dir := extDir(t, map[string]string{"a-rec": "record", "b-victim": "record"})
	a := startAgentWith(t, 1, 5*time.Second, "echo", func(c *Config) { c.ExtensionsDir = dir })
	waitFor(t, "readiness", a.pool.isReady)
	invokeID(t, a, "r1", `{}`)
	es := a.pool.workers[0].ext.Load()
	a.pool.mu.Lock()
	var pid int
	for _, xp := range es.procs {
		if xp.name == "b-victim" {
			pid = xp.pid
		}
	}
	a.pool.mu.Unlock()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil { // as a crash would
		t.Fatal(err)
	}
	waitFor(t, "a new environment", func() bool { return a.pool.workers[0].ext.Load() != es })
	if resp, body := invokeID(t, a, "r2", `{"c":3}`); body != `{"c":3}` {
		t.Fatalf("after the crash: %v %s", resp.Header, body)
	}
	expectLines(t, filepath.Join(dir, "a-rec.out"), "REGISTERED INVOKE_r1 SHUTDOWN_failure REGISTERED INVOKE_r2")
	if !strings.Contains(a.out.String(), "Extension.Crash: extension b-victim crashed: signal: killed") {
		t.Errorf("the crash is not logged:\n%s", a.out.String())
	}
}

// Internal extensions register from the runtime process, for INVOKE only, and see the invocations.
func TestInternalExtension(t *testing.T) {
	out := filepath.Join(t.TempDir(), "internal.out")
	t.Setenv("AGENT_TEST_EXT_OUT", out)
	a := startAgent(t, 1, 5*time.Second, "internal")
	waitFor(t, "readiness", a.pool.isReady)
	invokeID(t, a, "i1", `{}`)
	invokeID(t, a, "i2", `{}`)
	expectLines(t, out, "SHUTDOWN-REGISTRATION_403 INVOKE_i1 INVOKE_i2")
}

// The API's refusals name what is wrong.
func TestExtensionAPIErrors(t *testing.T) {
	a := startAgent(t, 1, 5*time.Second, "echo")
	waitFor(t, "readiness", a.pool.isReady)
	base := "http://" + a.pool.workers[0].addr + "/2020-01-01/extension"
	call := func(method, path, body string, h map[string]string) (int, string) {
		req, _ := http.NewRequest(method, base+path, bytes.NewBufferString(body))
		for k, v := range h {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, c := range []struct {
		method, path, body string
		h                  map[string]string
		status             int
		errType            string
	}{
		{"POST", "/register", `{"events":["INVOKE"]}`, nil, 400, "InvalidRequest"},
		{"POST", "/register", `{"events":["START"]}`, map[string]string{"Lambda-Extension-Name": "x"}, 400, "InvalidEventType"},
		{"POST", "/register", `{"events":["INVOKE"]}`, map[string]string{"Lambda-Extension-Name": "late"}, 403, "InvalidStateTransition"},
		{"GET", "/event/next", ``, nil, 403, "Extension.MissingExtensionIdentifier"},
		{"GET", "/event/next", ``, map[string]string{"Lambda-Extension-Identifier": "nope"}, 403, "Extension.UnknownExtensionIdentifier"},
		{"POST", "/event/next", ``, nil, 405, "MethodNotAllowed"},
		{"GET", "/unknown", ``, nil, 404, "UnknownPath"},
	} {
		status, body := call(c.method, c.path, c.body, c.h)
		if status != c.status || !strings.Contains(body, `"errorType":"`+c.errType+`"`) {
			t.Errorf("%s %s %v: %d %s, want %d %s", c.method, c.path, c.h, status, body, c.status, c.errType)
		}
	}
}
