package main

// Lambda's logging controls (LoggingConfig, docs/logs.md "Log format and levels"): a Function's logFormat
// (Text or JSON), applicationLogLevel and systemLogLevel.
//
//   - Text (the default): the agent writes START / END / REPORT lines and passes the runtime's output as it is.
//   - JSON: the agent's own records are Lambda's JSON system records, one object a line:
//     {"time":..,"type":"platform.start","record":{"requestId":..,"version":..}},
//     {"time":..,"type":"platform.runtimeDone","record":{"requestId":..,"status":..,"metrics":{"durationMs":..}}},
//     {"time":..,"type":"platform.report","record":{"requestId":..,"status":..,"metrics":{...}}}; END is not
//     written (Lambda's JSON logs have none). Its other lines (timeouts, its own messages) are
//     {"time":..,"level":..,"requestId":..,"message":..}. The runtime gets AWS_LAMBDA_LOG_FORMAT=JSON and
//     AWS_LAMBDA_LOG_LEVEL, so AWS's runtime clients, ours and Powertools write JSON application logs.
//   - Levels (JSON only, as on Lambda): a system record goes out only at systemLogLevel or above
//     (platform.start and platform.report are INFO, platform.runtimeDone DEBUG, timeouts and failures WARN);
//     an application line only at applicationLogLevel or above, its level read from a JSON object's "level"
//     field, INFO when the line is not JSON or the level is missing or unknown (Lambda's rule).
//
// The pipe still carries the agent's lines in their text form behind the marker (logs.go): the pipe reader
// parses them as before (request ids, the captured tail) and renders them here on the way out.

import (
	"bytes"
	"strconv"
	"strings"
	"time"
)

// Levels, in Lambda's order (TRACE is the most detail, FATAL the least).
const (
	levelTrace = iota
	levelDebug
	levelInfo
	levelWarn
	levelError
	levelFatal
)

var levelNames = []string{"TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"}

// parseLevel reads a level name (any case; WARNING and CRITICAL as Python writes them); -1 if unknown.
func parseLevel(s string) int {
	switch strings.ToUpper(s) {
	case "TRACE":
		return levelTrace
	case "DEBUG":
		return levelDebug
	case "INFO":
		return levelInfo
	case "WARN", "WARNING":
		return levelWarn
	case "ERROR":
		return levelError
	case "FATAL", "CRITICAL":
		return levelFatal
	}
	return -1
}

// logFormat is the LoggingConfig the agent applies; the zero value is Text.
type logFormat struct {
	JSON     bool
	AppLevel int // lines below it are dropped (JSON only)
	SysLevel int // system records below it are dropped (JSON only)
}

var textFormat = &logFormat{}

// parseLogFormat validates a LoggingConfig as Lambda does: levels only with JSON; JSON's levels default to INFO.
func parseLogFormat(format, appLevel, sysLevel string, bad func(key, value, why string)) logFormat {
	f := logFormat{AppLevel: levelInfo, SysLevel: levelInfo}
	switch strings.ToUpper(format) {
	case "", "TEXT":
	case "JSON":
		f.JSON = true
	default:
		bad("log-format (KUBELAMBDA_LOG_FORMAT)", format, "want Text or JSON")
	}
	if !f.JSON {
		if appLevel != "" {
			bad("application-log-level (KUBELAMBDA_APPLICATION_LOG_LEVEL)", appLevel, "needs log-format JSON (as on Lambda)")
		}
		if sysLevel != "" {
			bad("system-log-level (KUBELAMBDA_SYSTEM_LOG_LEVEL)", sysLevel, "needs log-format JSON (as on Lambda)")
		}
		return f
	}
	if appLevel != "" {
		if f.AppLevel = parseLevel(appLevel); f.AppLevel < 0 || strings.EqualFold(appLevel, "WARNING") || strings.EqualFold(appLevel, "CRITICAL") {
			bad("application-log-level (KUBELAMBDA_APPLICATION_LOG_LEVEL)", appLevel, "want TRACE, DEBUG, INFO, WARN, ERROR or FATAL")
		}
	}
	if sysLevel != "" {
		if f.SysLevel = parseLevel(sysLevel); f.SysLevel != levelDebug && f.SysLevel != levelInfo && f.SysLevel != levelWarn {
			bad("system-log-level (KUBELAMBDA_SYSTEM_LOG_LEVEL)", sysLevel, "want DEBUG, INFO or WARN")
		}
	}
	return f
}

// runtimeEnv is what the runtime learns of the format: AWS_LAMBDA_LOG_FORMAT and AWS_LAMBDA_LOG_LEVEL in JSON mode.
func (f *logFormat) runtimeEnv(env map[string]string) {
	if f != nil && f.JSON {
		env["AWS_LAMBDA_LOG_FORMAT"] = "JSON"
		env["AWS_LAMBDA_LOG_LEVEL"] = levelNames[f.AppLevel]
	}
}

// keepApp reports whether an application line passes applicationLogLevel.
func (f *logFormat) keepApp(line []byte) bool {
	if !f.JSON || f.AppLevel <= levelInfo && !bytes.HasPrefix(bytes.TrimLeft(line, " \t"), []byte("{")) {
		return true // a non-JSON line is INFO: kept at INFO and below without a look
	}
	return appLevelOf(line) >= f.AppLevel
}

// appLevelOf is the level of an application line: a JSON object's "level" string, else INFO. It scans for the
// key instead of decoding the line: it runs for every line in JSON mode.
func appLevelOf(line []byte) int {
	t := bytes.TrimLeft(line, " \t")
	if len(t) == 0 || t[0] != '{' {
		return levelInfo
	}
	i := bytes.Index(t, []byte(`"level"`))
	if i < 0 {
		return levelInfo
	}
	rest := bytes.TrimLeft(t[i+len(`"level"`):], " \t")
	if len(rest) == 0 || rest[0] != ':' {
		return levelInfo
	}
	rest = bytes.TrimLeft(rest[1:], " \t")
	if len(rest) == 0 || rest[0] != '"' {
		return levelInfo
	}
	end := bytes.IndexByte(rest[1:], '"')
	if end < 0 || end > 16 {
		return levelInfo
	}
	if lv := parseLevel(string(rest[1 : 1+end])); lv >= 0 {
		return lv
	}
	return levelInfo
}

// render turns one of the agent's text lines into what the pod's log gets: the line itself in Text mode; in
// JSON mode zero, one or two JSON lines (without their final newline), after the system level filter.
func (f *logFormat) render(text []byte, now time.Time) [][]byte {
	text = bytes.TrimRight(text, "\r\n")
	if f == nil || !f.JSON {
		return [][]byte{text}
	}
	switch {
	case bytes.HasPrefix(text, []byte("START RequestId: ")):
		if f.SysLevel > levelInfo {
			return nil
		}
		id, version := requestIDOf(text), ""
		if _, v, ok := bytes.Cut(text, []byte(" Version: ")); ok {
			version = string(v)
		}
		b := systemHead(now, "platform.start")
		b = append(b, `{"requestId":`...)
		b = appendJSONString(b, id)
		b = append(b, `,"version":`...)
		b = appendJSONString(b, version)
		return [][]byte{append(b, "}}"...)}
	case bytes.HasPrefix(text, []byte("END RequestId: ")):
		return nil
	case bytes.HasPrefix(text, []byte("REPORT RequestId: ")):
		return f.renderReport(text, now)
	}
	// Another line of the agent's: a timeout, a failure (WARN) or a message of its own (INFO).
	level, id, msg := levelInfo, "", text
	if ts, rest, ok := bytes.Cut(text, []byte(" ")); ok && len(ts) == 24 && ts[10] == 'T' { // "<time> <id> Task timed out..."
		if rid, m, ok := bytes.Cut(rest, []byte(" ")); ok {
			id, msg, level = string(rid), m, levelWarn
		}
	} else if bytes.Contains(text, []byte("Error")) || bytes.Contains(text, []byte("could not")) || bytes.Contains(text, []byte("timed out")) {
		level = levelWarn
	}
	if level < f.SysLevel {
		return nil
	}
	b := []byte(`{"time":"`)
	b = now.UTC().AppendFormat(b, "2006-01-02T15:04:05.000Z")
	b = append(b, `","level":"`...)
	b = append(b, levelNames[level]...)
	b = append(b, '"')
	if id != "" {
		b = append(b, `,"requestId":`...)
		b = appendJSONString(b, id)
	}
	b = append(b, `,"message":`...)
	b = appendJSONBytes(b, msg)
	return [][]byte{append(b, '}')}
}

func systemHead(now time.Time, typ string) []byte {
	b := make([]byte, 0, 256)
	b = append(b, `{"time":"`...)
	b = now.UTC().AppendFormat(b, "2006-01-02T15:04:05.000Z")
	b = append(b, `","type":"`...)
	b = append(b, typ...)
	return append(b, `","record":`...)
}

// renderReport reads a REPORT line back (formatReport writes it: "REPORT RequestId: ID\tKey: value unit\t...")
// into platform.runtimeDone (DEBUG) and platform.report (INFO).
func (f *logFormat) renderReport(text []byte, now time.Time) [][]byte {
	fields := map[string]string{}
	for _, part := range strings.Split(string(text), "\t") {
		if k, v, ok := strings.Cut(part, ": "); ok {
			fields[k] = v
		}
	}
	id := requestIDOf(text)
	status := "success"
	switch fields["Status"] {
	case "timeout":
		status = "timeout"
	case "error":
		status = "error"
	}
	num := func(key, unit string) string {
		v := strings.TrimSuffix(fields[key], " "+unit)
		if _, err := strconv.ParseFloat(v, 64); err != nil {
			return ""
		}
		return v
	}
	var out [][]byte
	head := func(typ string) []byte {
		b := systemHead(now, typ)
		b = append(b, `{"requestId":`...)
		b = appendJSONString(b, id)
		b = append(b, `,"status":"`...)
		b = append(b, status...)
		b = append(b, '"')
		if e := fields["Error Type"]; e != "" {
			b = append(b, `,"errorType":`...)
			b = appendJSONString(b, e)
		}
		return b
	}
	if f.SysLevel <= levelDebug {
		b := head("platform.runtimeDone")
		if d := num("Duration", "ms"); d != "" {
			b = append(b, `,"metrics":{"durationMs":`...)
			b = append(b, d...)
			b = append(b, '}')
		}
		out = append(out, append(b, "}}"...))
	}
	if f.SysLevel <= levelInfo {
		b := head("platform.report")
		b = append(b, `,"metrics":{`...)
		sep := ""
		for _, m := range [][3]string{
			{"durationMs", "Duration", "ms"}, {"billedDurationMs", "Billed Duration", "ms"},
			{"memorySizeMB", "Memory Size", "MB"}, {"maxMemoryUsedMB", "Max Memory Used", "MB"},
			{"initDurationMs", "Init Duration", "ms"},
		} {
			if v := num(m[1], m[2]); v != "" {
				b = append(b, sep...)
				b = append(b, '"')
				b = append(b, m[0]...)
				b = append(b, `":`...)
				b = append(b, v...)
				sep = ","
			}
		}
		b = append(b, '}')
		if s := fields["Runtime Substitute"]; s != "" {
			b = append(b, `,"runtimeSubstitute":`...)
			b = appendJSONString(b, s)
		}
		out = append(out, append(b, "}}"...))
	}
	return out
}
