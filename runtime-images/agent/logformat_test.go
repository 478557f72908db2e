package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestParseLogFormat(t *testing.T) {
	var errs []string
	bad := func(key, value, why string) { errs = append(errs, key+"="+value+": "+why) }
	if f := parseLogFormat("", "", "", bad); f.JSON || len(errs) > 0 {
		t.Fatalf("default: %+v %v", f, errs)
	}
	if f := parseLogFormat("json", "warn", "debug", bad); !f.JSON || f.AppLevel != levelWarn || f.SysLevel != levelDebug || len(errs) > 0 {
		t.Fatalf("json: %+v %v", f, errs)
	}
	if f := parseLogFormat("JSON", "", "", bad); f.AppLevel != levelInfo || f.SysLevel != levelInfo {
		t.Fatalf("JSON's levels default to INFO: %+v", f)
	}
	for _, c := range [][4]string{
		{"XML", "", "", "log-format (KUBELAMBDA_LOG_FORMAT)=XML: want Text or JSON"},
		{"Text", "DEBUG", "", "application-log-level (KUBELAMBDA_APPLICATION_LOG_LEVEL)=DEBUG: needs log-format JSON (as on Lambda)"},
		{"Text", "", "WARN", "system-log-level (KUBELAMBDA_SYSTEM_LOG_LEVEL)=WARN: needs log-format JSON (as on Lambda)"},
		{"JSON", "LOUD", "", "application-log-level (KUBELAMBDA_APPLICATION_LOG_LEVEL)=LOUD: want TRACE, DEBUG, INFO, WARN, ERROR or FATAL"},
		{"JSON", "", "ERROR", "system-log-level (KUBELAMBDA_SYSTEM_LOG_LEVEL)=ERROR: want DEBUG, INFO or WARN"},
	} {
		errs = nil
		parseLogFormat(c[0], c[1], c[2], bad)
		if len(errs) != 1 || errs[0] != c[3] {
			t.Errorf("%v: got %v", c[:3], errs)
		}
	}
}

func TestAppLevelOf(t *testing.T) {
	for line, want := range map[string]int{
		`{"timestamp":"x","level":"DEBUG","message":"m"}`: levelDebug,
		`{"level": "warning", "msg": "m"}`:                levelWarn,
		`  {"level":"Error"}`:                             levelError,
		`{"level":"CRITICAL"}`:                            levelFatal,
		`{"level":"loud"}`:                                levelInfo, // unknown: INFO, as Lambda assigns
		`{"message":"no level"}`:                          levelInfo,
		`{"level":3}`:                                     levelInfo,
		`[ERROR] not json`:                                levelInfo,
		``:                                                levelInfo,
	} {
		if got := appLevelOf([]byte(line)); got != want {
			t.Errorf("%q: got %s want %s", line, levelNames[got], levelNames[want])
		}
	}
	warn := &logFormat{JSON: true, AppLevel: levelWarn, SysLevel: levelInfo}
	if warn.keepApp([]byte("plain print\n")) || warn.keepApp([]byte(`{"level":"INFO"}`)) || !warn.keepApp([]byte(`{"level":"ERROR"}`)) {
		t.Error("applicationLogLevel WARN keeps only WARN and above (a plain line is INFO)")
	}
	if !textFormat.keepApp([]byte(`{"level":"DEBUG"}`)) {
		t.Error("Text mode filters nothing")
	}
}

func decodeAll(t *testing.T, lines [][]byte) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range lines {
		var m map[string]any
		if err := json.Unmarshal(l, &m); err != nil {
			t.Fatalf("not JSON: %q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

func TestRenderJSON(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 6e6, time.UTC)
	f := &logFormat{JSON: true, AppLevel: levelInfo, SysLevel: levelDebug}
	start := decodeAll(t, f.render([]byte(startLine("r1", "$LATEST")+"\n"), now))
	if len(start) != 1 || start[0]["type"] != "platform.start" || start[0]["time"] != "2026-01-02T03:04:05.006Z" {
		t.Fatalf("start: %v", start)
	}
	if rec := start[0]["record"].(map[string]any); rec["requestId"] != "r1" || rec["version"] != "$LATEST" {
		t.Errorf("start record: %v", rec)
	}
	if got := f.render([]byte(formatEnd("r1")), now); len(got) != 0 {
		t.Errorf("END is not written in JSON: %q", got)
	}
	report := formatReport("r1", 3120*time.Microsecond, reportInfo{memoryMB: 128, maxMemMB: 56, initDur: 200670 * time.Microsecond,
		status: "timeout"})
	recs := decodeAll(t, f.render([]byte(report), now))
	if len(recs) != 2 || recs[0]["type"] != "platform.runtimeDone" || recs[1]["type"] != "platform.report" {
		t.Fatalf("report: %v", recs)
	}
	rec := recs[1]["record"].(map[string]any)
	metrics := rec["metrics"].(map[string]any)
	if rec["requestId"] != "r1" || rec["status"] != "timeout" || metrics["durationMs"] != 3.12 || metrics["billedDurationMs"] != 4.0 ||
		metrics["memorySizeMB"] != 128.0 || metrics["maxMemoryUsedMB"] != 56.0 || metrics["initDurationMs"] != 200.67 {
		t.Errorf("report record: %v", rec)
	}
	errReport := formatReport("r2", time.Millisecond, reportInfo{memoryMB: 128, status: "error", errType: "Runtime.ExitError"})
	if rec := decodeAll(t, f.render([]byte(errReport), now))[1]["record"].(map[string]any); rec["status"] != "error" || rec["errorType"] != "Runtime.ExitError" {
		t.Errorf("error report: %v", rec)
	}
	timeout := decodeAll(t, f.render([]byte("2026-01-02T03:04:05.000Z r1 Task timed out after 3.00 seconds"), now))
	if len(timeout) != 1 || timeout[0]["level"] != "WARN" || timeout[0]["requestId"] != "r1" || timeout[0]["message"] != "Task timed out after 3.00 seconds" {
		t.Errorf("timeout: %v", timeout)
	}
	own := decodeAll(t, f.render([]byte(`kubelambda-agent: serving "x"`), now))
	if len(own) != 1 || own[0]["level"] != "INFO" || own[0]["message"] != `kubelambda-agent: serving "x"` {
		t.Errorf("agent line: %v", own)
	}

	// systemLogLevel: INFO leaves out runtimeDone, WARN leaves out start and report too.
	info := &logFormat{JSON: true, SysLevel: levelInfo}
	if got := decodeAll(t, info.render([]byte(report), now)); len(got) != 1 || got[0]["type"] != "platform.report" {
		t.Errorf("INFO: %v", got)
	}
	warn := &logFormat{JSON: true, SysLevel: levelWarn}
	for _, l := range []string{startLine("r1", "1"), report, "kubelambda-agent: stopped"} {
		if got := warn.render([]byte(l), now); len(got) != 0 {
			t.Errorf("WARN keeps %q", got)
		}
	}
	if got := warn.render([]byte("2026-01-02T03:04:05.000Z r1 Task timed out after 3.00 seconds"), now); len(got) != 1 {
		t.Error("WARN keeps the timeout")
	}
	// Text: the line as it is.
	if got := textFormat.render([]byte(report+"\n"), now); len(got) != 1 || string(got[0]) != strings.TrimSuffix(report, "\n") {
		t.Errorf("text: %q", got)
	}
}

func TestRuntimeEnvOfJSON(t *testing.T) {
	c := &Config{Format: logFormat{JSON: true, AppLevel: levelTrace, SysLevel: levelInfo}, FunctionName: "f", RuntimeName: "python3.12"}
	env := strings.Join(workerEnv(c, []string{"AWS_LAMBDA_LOG_LEVEL=DEBUG"}), "\n")
	if !strings.Contains(env, "AWS_LAMBDA_LOG_FORMAT=JSON") || !strings.Contains(env, "AWS_LAMBDA_LOG_LEVEL=TRACE") || strings.Contains(env, "LEVEL=DEBUG") {
		t.Errorf("JSON env: %s", env)
	}
	c.Format = logFormat{}
	if env := strings.Join(workerEnv(c, nil), "\n"); strings.Contains(env, "AWS_LAMBDA_LOG_") && strings.Contains(env, "FORMAT") {
		t.Errorf("Text env: %s", env)
	}
}
