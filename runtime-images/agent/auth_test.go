package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"
)

// send makes one request, with a bearer token if given, and returns its status, headers and body.
func send(t *testing.T, method, url, token string, body []byte) (int, http.Header, []byte) {
	t.Helper()
	var reader io.Reader
	if body != nil {
		reader = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, url, reader)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

func call(t *testing.T, method, url, token string, body any) int {
	t.Helper()
	var raw []byte
	if body != nil {
		raw, _ = json.Marshal(body)
	}
	status, _, _ := send(t, method, url, token, raw)
	return status
}

// A pool pod: its pool's token opens /specialize; the function's token, given there, then replaces it.
func TestAdminEndpointsNeedThePodsToken(t *testing.T) {
	t.Setenv(agentTokenEnv, "pool-token")
	sum := sha256.Sum256([]byte("metrics-token"))
	t.Setenv(metricsTokenEnv, hex.EncodeToString(sum[:])) // what the pod holds: the hash, never the token
	a := startAgentWith(t, 1, 2*time.Second, "ok", func(c *Config) {
		c.Generic = genericDeferred
		c.FunctionName = "pool-fake"
	})
	waitReady(t, a.url) // probes need no token
	req := specializeRequest{FunctionName: "hello", Handler: "app.handler", CodeSha256: "abc", MemoryMB: 128,
		TimeoutSeconds: 2, Inline: map[string]string{"app.py": "x"}, AgentToken: "function-token"}
	for _, token := range []string{"", "wrong", "metrics-token"} {
		if got := call(t, "POST", a.url+"/specialize", token, req); got != http.StatusUnauthorized {
			t.Fatalf("specialise with token %q: %d, want 401", token, got)
		}
		if got := call(t, "POST", a.url+"/invoke", token, map[string]string{}); got != http.StatusUnauthorized {
			t.Fatalf("invoke with token %q: %d, want 401", token, got)
		}
	}
	if got := call(t, "GET", a.url+"/metrics", "", nil); got != http.StatusUnauthorized {
		t.Fatalf("metrics without a token: %d, want 401", got)
	}
	if got := call(t, "GET", a.url+"/metrics", hex.EncodeToString(sum[:]), nil); got != http.StatusUnauthorized {
		t.Fatalf("metrics with the hash the pod holds: %d, want 401", got)
	}
	if got := call(t, "GET", a.url+"/metrics", "metrics-token", nil); got != 200 {
		t.Fatalf("metrics with the metrics token: %d, want 200", got)
	}
	if got := call(t, "POST", a.url+"/specialize", "pool-token", req); got != 200 {
		t.Fatalf("specialise with the pool token: %d, want 200", got)
	}
	if got := call(t, "POST", a.url+"/invoke", "pool-token", map[string]string{}); got != http.StatusUnauthorized {
		t.Fatalf("invoke with the pool token after specialisation: %d, want 401", got)
	}
	if got := call(t, "POST", a.url+"/invoke", "function-token", map[string]string{}); got != 200 {
		t.Fatalf("invoke with the function's token: %d, want 200", got)
	}
}
