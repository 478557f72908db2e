package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestParseRuntimePath(t *testing.T) {
	tests := []struct {
		path  string
		route routeKind
		id    string
	}{
		{"/2018-06-01/runtime/invocation/next", routeNext, ""},
		{"/2018-06-01/runtime/init/error", routeInitError, ""},
		{"/2018-06-01/runtime/invocation/abc-123/response", routeResponse, "abc-123"},
		{"/2018-06-01/runtime/invocation/abc-123/error", routeError, "abc-123"},
		{"/2018-06-01/runtime/invocation//response", routeUnknown, ""},
		{"/2018-06-01/runtime/invocation/a/b/response", routeUnknown, ""},
		{"/2018-06-01/runtime/invocation/abc/other", routeUnknown, ""},
		{"/2018-06-01/runtime/invocation/next/", routeUnknown, ""},
		{"/2020-01-01/extension/register", routeUnknown, ""},
		{"", routeUnknown, ""},
	}
	for _, tt := range tests {
		route, id := parseRuntimePath(tt.path)
		if route != tt.route || id != tt.id {
			t.Errorf("parseRuntimePath(%q) = %v, %q; want %v, %q", tt.path, route, id, tt.route, tt.id)
		}
	}
}

func TestErrorBody(t *testing.T) {
	tests := []struct {
		name, body, header, wantType string
	}{
		{"lambda json", `{"errorType":"ValueError","errorMessage":"x"}`, "ValueError", "ValueError"},
		{"type from body", `{"errorType":"TypeError","errorMessage":"x"}`, "", "TypeError"},
		{"type from header", `{"errorMessage":"x"}`, "Custom", "Custom"},
		{"not json", `boom`, "Runtime.Foo", "Runtime.Foo"},
		{"empty", ``, "", "Runtime.Unknown"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body, typ := errorBody([]byte(tt.body), tt.header)
			if typ != tt.wantType {
				t.Errorf("type = %q, want %q", typ, tt.wantType)
			}
			var m map[string]any
			if err := json.Unmarshal(body, &m); err != nil {
				t.Errorf("body %q is not a JSON object: %v", body, err)
			}
		})
	}
}

func TestReadBody(t *testing.T) {
	tests := []struct {
		name     string
		body     string
		length   int64 // -1: unknown (chunked)
		limit    int
		tooLarge bool
	}{
		{"fits", "hello", 5, 5, false},
		{"over by one", "hello!", 6, 5, true},
		{"chunked fits", "hello", -1, 5, false},
		{"chunked over", "hello!", -1, 5, true},
		{"empty", "", 0, 5, false},
		{"lying length", "hello!!", 3, 5, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodPost, "/", io.NopCloser(strings.NewReader(tt.body)))
			r.ContentLength = tt.length
			got, tooLarge, err := readBody(r, tt.limit)
			if err != nil {
				t.Fatal(err)
			}
			if tooLarge != tt.tooLarge {
				t.Fatalf("tooLarge = %v", tooLarge)
			}
			if !tooLarge && string(got) != tt.body {
				t.Errorf("body = %q", got)
			}
		})
	}
}

// FuzzRuntimeAPI throws arbitrary requests at the Runtime API of an idle worker: it must never
// panic and must answer with one of the statuses the official clients know.
func FuzzRuntimeAPI(f *testing.F) {
	f.Add("GET", "/2018-06-01/runtime/invocation/next", []byte(""), "")
	f.Add("POST", "/2018-06-01/runtime/invocation/abc/response", []byte(`{"a":1}`), "")
	f.Add("POST", "/2018-06-01/runtime/invocation/abc/error", []byte(`{"errorType":"X"}`), "X")
	f.Add("POST", "/2018-06-01/runtime/init/error", []byte(`not json`), "Runtime.Foo")
	f.Add("PUT", "/2018-06-01/runtime/invocation/a/b/c", []byte{0xff}, "")
	f.Fuzz(func(t *testing.T, method, path string, body []byte, errType string) {
		p, w := fuzzPool(t)
		api := &runtimeAPI{pool: p, w: w}
		// Built by hand: the handler must cope with whatever the HTTP parser lets through.
		req := &http.Request{Method: method, URL: &url.URL{Path: path}, Header: http.Header{},
			Body: io.NopCloser(bytes.NewReader(body)), ContentLength: int64(len(body))}
		req.Header.Set("Lambda-Runtime-Function-Error-Type", errType)
		ctx, cancel := context.WithCancel(req.Context())
		cancel() // a "next" must not wait for an event that never comes
		rec := httptest.NewRecorder()
		api.ServeHTTP(rec, req.WithContext(ctx))
		switch rec.Code {
		case 200, 202, 400, 403, 404, 405, 413:
		default:
			t.Fatalf("%s %s answered %d", method, path, rec.Code)
		}
	})
}

func fuzzPool(t *testing.T) (*pool, *worker) {
	cfg := &Config{Workers: 1, MaxResponse: 1 << 10, MemoryMB: 128, FunctionVersion: "$LATEST", RuntimeAPI: "127.0.0.1:9001"}
	p := newPool(cfg, newLogger(io.Discard, io.Discard), newMetrics(1))
	w := p.workers[0]
	pr := &proc{w: w, events: make(chan *invocation, 1), exited: make(chan struct{}), ext: p.newExtSet(w)}
	w.cur.Store(pr)
	return p, w
}

// A "next" whose connection went away must not lose the event handed to it, nor wedge the worker.
func TestNextAfterAbandonedNext(t *testing.T) {
	p, w := fuzzPool(t)
	p.cfg.Timeout = time.Second
	api := &runtimeAPI{pool: p, w: w}
	pr := w.cur.Load()

	// The first "next" registers the worker as ready, then its client disconnects.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		req := httptest.NewRequest("GET", "/2018-06-01/runtime/invocation/next", nil).WithContext(ctx)
		api.ServeHTTP(httptest.NewRecorder(), req)
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		p.mu.Lock()
		n := len(p.ready)
		p.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the worker never became ready")
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-done

	// The worker is not ready now; an invocation waits for it.
	inv := &invocation{id: "req-1", payload: []byte(`{}`), done: make(chan struct{})}
	inv.setDeadline(time.Now().Add(time.Second))
	if _, ok := p.submit(inv); !ok {
		t.Fatal("refused")
	}
	// The runtime asks again and gets exactly that event.
	rec := httptest.NewRecorder()
	api.ServeHTTP(rec, httptest.NewRequest("GET", "/2018-06-01/runtime/invocation/next", nil))
	if got := rec.Header().Get("Lambda-Runtime-Aws-Request-Id"); got != "req-1" || rec.Code != 200 {
		t.Fatalf("next answered %d for %q", rec.Code, got)
	}
	if pr.cur != inv {
		t.Fatal("the invocation is not the worker's current one")
	}
}

// An event handed to a "next" that then went away is delivered to the following "next".
func TestUndeliveredEventGoesToTheNextNext(t *testing.T) {
	p, w := fuzzPool(t)
	api := &runtimeAPI{pool: p, w: w}
	pr := w.cur.Load()
	p.nextReady(pr) // as if a "next" had arrived and then vanished without reading its event
	inv := &invocation{id: "req-2", payload: []byte(`{}`), done: make(chan struct{})}
	inv.setDeadline(time.Now().Add(time.Second))
	if _, ok := p.submit(inv); !ok {
		t.Fatal("refused")
	}
	rec := httptest.NewRecorder()
	api.ServeHTTP(rec, httptest.NewRequest("GET", "/2018-06-01/runtime/invocation/next", nil))
	if got := rec.Header().Get("Lambda-Runtime-Aws-Request-Id"); got != "req-2" {
		t.Fatalf("next got %q", got)
	}
	select {
	case <-inv.done:
		t.Fatalf("the invocation was failed: %s", inv.res.body)
	default:
	}
}
