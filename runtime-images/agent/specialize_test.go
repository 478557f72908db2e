package main

import (
	"archive/zip"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// awaitFunction is the fake runtime's side of the pre-start convention: ask for the function's environment
// before anything else, and adopt it.
func awaitFunction() {
	resp, err := http.Get("http://" + os.Getenv("AWS_LAMBDA_RUNTIME_API") + specializationPath)
	if err != nil {
		os.Exit(5)
	}
	defer resp.Body.Close()
	var o struct {
		Env   map[string]string `json:"env"`
		Unset []string          `json:"unset"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&o); err != nil {
		os.Exit(6)
	}
	for _, k := range o.Unset {
		_ = os.Unsetenv(k)
	}
	for k, v := range o.Env {
		_ = os.Setenv(k, v)
	}
}

func genericAgent(t *testing.T, mode genericMode) *testAgent {
	t.Helper()
	return startAgentWith(t, 1, 2*time.Second, "ok", func(c *Config) {
		c.Generic = mode
		c.FunctionName = "pool-fake"
		c.FunctionARN = "arn:aws:lambda:us-east-1:000000000000:function:pool-fake"
	})
}

func postJSON(t *testing.T, url string, body any) (int, specializeStatus) {
	t.Helper()
	b, _ := json.Marshal(body)
	resp, err := http.Post(url, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var st specializeStatus
	_ = json.Unmarshal(raw, &st)
	return resp.StatusCode, st
}

func waitReady(t *testing.T, url string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(url + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("the generic agent never became ready")
}

func TestGenericSpecializeInline(t *testing.T) {
	for _, tc := range []struct {
		name string
		mode genericMode
	}{{"prestart", genericPrestart}, {"deferred", genericDeferred}} {
		t.Run(tc.name, func(t *testing.T) {
			a := genericAgent(t, tc.mode)
			leftover := filepath.Join(a.pool.cfg.TaskRoot, "leftover.py")
			if err := os.WriteFile(leftover, []byte("another function's"), 0o644); err != nil {
				t.Fatal(err)
			}
			waitReady(t, a.url)
			if tc.mode == genericPrestart && a.pool.parked.Load() != 1 {
				t.Fatalf("parked = %d, want the pre-started runtime waiting", a.pool.parked.Load())
			}
			// Before specialisation the pod refuses invokes.
			resp, _ := a.invoke(t, `{}`)
			if resp.StatusCode != http.StatusServiceUnavailable {
				t.Fatalf("invoke before specialisation: %d, want 503", resp.StatusCode)
			}
			req := specializeRequest{FunctionName: "hello", FunctionVersion: "3", Handler: "app.handler", CodeSha256: "abc",
				MemoryMB: 256, TimeoutSeconds: 2, Inline: map[string]string{"app.py": "print('hi')", "lib/x.txt": "x"},
				Environment: map[string]string{"GREETING": "hey", "AWS_LAMBDA_FUNCTION_NAME": "evil", "KUBELAMBDA_X": "no"},
				Logging:     &loggingConfig{LogFormat: "JSON", ApplicationLogLevel: "WARN"}}
			status, st := postJSON(t, a.url+"/specialize", req)
			if status != 200 || st.State != "ready" || st.FunctionName != "hello" || st.CodeSha256 != "abc" {
				t.Fatalf("specialise: %d %+v", status, st)
			}
			for ev, want := range map[string]string{
				`{"file":"app.py"}`:                         `"print('hi')"`,
				`{"file":"lib/x.txt"}`:                      `"x"`,
				`{"env":"GREETING"}`:                        `"hey"`,
				`{"env":"AWS_LAMBDA_FUNCTION_NAME"}`:        `"hello"`,
				`{"env":"AWS_LAMBDA_FUNCTION_VERSION"}`:     `"3"`,
				`{"env":"_HANDLER"}`:                        `"app.handler"`,
				`{"env":"AWS_LAMBDA_FUNCTION_MEMORY_SIZE"}`: `"256"`,
				`{"env":"KUBELAMBDA_AWAIT_SPECIALIZATION"}`: `""`,
				`{"env":"AWS_LAMBDA_LOG_FORMAT"}`:           `"JSON"`, // the Function's LoggingConfig
				`{"env":"AWS_LAMBDA_LOG_LEVEL"}`:            `"WARN"`,
			} {
				resp, body := a.invoke(t, ev)
				if resp.StatusCode != 200 || body != want {
					t.Errorf("invoke %s: %d %s, want %s", ev, resp.StatusCode, body, want)
				}
			}
			if _, err := os.Stat(leftover); !os.IsNotExist(err) {
				t.Errorf("a file from before the specialisation survived: %v", err)
			}
			// JSON from the specialisation on: platform records, and the runtime's plain lines (INFO) under WARN dropped.
			waitFor(t, "a platform.report record", func() bool { return strings.Contains(a.out.String(), `"type":"platform.report"`) })
			if out := a.out.String(); strings.Contains(out, "START RequestId") || strings.Contains(out, "handling ") {
				t.Errorf("text lines after a JSON specialisation:\n%s", out)
			}
			// Never a second function, nor the same one again.
			for _, name := range []string{"other", "hello"} {
				req.FunctionName = name
				if status, st := postJSON(t, a.url+"/specialize", req); status != http.StatusConflict || st.FunctionName != "hello" {
					t.Errorf("second specialise (%s): %d %+v, want 409 naming hello", name, status, st)
				}
			}
		})
	}
}

func zipOf(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for name, content := range files {
		w, err := zw.Create(name)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = w.Write([]byte(content))
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestGenericSpecializeArchive(t *testing.T) {
	good := zipOf(t, map[string]string{"app.py": "zipped"})
	evil := zipOf(t, map[string]string{"../escape.py": "x"})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/good.zip":
			_, _ = w.Write(good)
		case "/evil.zip":
			_, _ = w.Write(evil)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	sum := func(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }
	for _, tc := range []struct {
		name, path, sha string
		status          int
		state, errPart  string
	}{
		{"verified", "/good.zip", sum(good), 200, "ready", ""},
		{"wrong sha256", "/good.zip", sum(evil), 502, "failed", "refusing to run it"},
		{"zip slip", "/evil.zip", sum(evil), 502, "failed", "'..'"},
		{"missing", "/none.zip", sum(good), 502, "failed", "answered 404"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := genericAgent(t, genericPrestart)
			waitReady(t, a.url)
			status, st := postJSON(t, a.url+"/specialize", specializeRequest{FunctionName: "zipped", Handler: "app.handler",
				CodeSha256: tc.sha, Archive: &archiveRef{URL: srv.URL + tc.path, Sha256: tc.sha}})
			if status != tc.status || st.State != tc.state || !strings.Contains(st.Error, tc.errPart) {
				t.Fatalf("specialise: %d %+v, want %d %s %q", status, st, tc.status, tc.state, tc.errPart)
			}
			if tc.status == 200 {
				if resp, body := a.invoke(t, `{"file":"app.py"}`); resp.StatusCode != 200 || body != `"zipped"` {
					t.Fatalf("invoke: %d %s", resp.StatusCode, body)
				}
				return
			}
			// A failed specialisation consumes the pod: it serves nothing, and takes no other function.
			if resp, _ := a.invoke(t, `{}`); resp.StatusCode != http.StatusServiceUnavailable {
				t.Fatalf("invoke after a failed specialisation: %d, want 503", resp.StatusCode)
			}
			if status, _ := postJSON(t, a.url+"/specialize", specializeRequest{FunctionName: "x", Handler: "h",
				CodeSha256: "s", Inline: map[string]string{"a": "b"}}); status != http.StatusConflict {
				t.Fatalf("specialise after failure: %d, want 409", status)
			}
		})
	}
}

func TestSpecializeRequestValidation(t *testing.T) {
	ok := specializeRequest{FunctionName: "f", Handler: "h", CodeSha256: "s", Inline: map[string]string{"a": "b"}}
	for _, tc := range []struct {
		name string
		edit func(*specializeRequest)
		want string
	}{
		{"valid", func(*specializeRequest) {}, ""},
		{"no name", func(r *specializeRequest) { r.FunctionName = "" }, "functionName"},
		{"no code", func(r *specializeRequest) { r.Inline = nil }, "exactly one"},
		{"both codes", func(r *specializeRequest) { r.Archive = &archiveRef{URL: "u", Sha256: "s"} }, "exactly one"},
		{"sha mismatch", func(r *specializeRequest) { r.Inline = nil; r.Archive = &archiveRef{URL: "u", Sha256: "t"} }, "differ"},
		{"memory", func(r *specializeRequest) { r.MemoryMB = 64 }, "memoryMB"},
		{"timeout", func(r *specializeRequest) { r.TimeoutSeconds = 1000 }, "timeoutSeconds"},
		{"logging", func(r *specializeRequest) { r.Logging = &loggingConfig{LogFormat: "JSON", SystemLogLevel: "WARN"} }, ""},
		{"logging level with Text", func(r *specializeRequest) { r.Logging = &loggingConfig{LogFormat: "Text", ApplicationLogLevel: "WARN"} },
			"logging: application-log-level (KUBELAMBDA_APPLICATION_LOG_LEVEL) \"WARN\": needs log-format JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := ok
			tc.edit(&r)
			err := r.validate()
			if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("validate: %v, want %q", err, tc.want)
			}
		})
	}
}

func TestCheckedName(t *testing.T) {
	for name, ok := range map[string]bool{
		"app.py": true, "lib/a.py": true, "./a": true, "a/../b": true,
		"": false, "/etc/passwd": false, "../x": false, "a/../../x": false, "a\\b": false,
	} {
		if _, err := checkedName(name); (err == nil) != ok {
			t.Errorf("checkedName(%q): %v, want ok=%v", name, err, ok)
		}
	}
}
