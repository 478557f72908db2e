package main

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func getStatus(t *testing.T, url string) (int, specializeStatus) {
	t.Helper()
	resp, err := http.Get(url + "/specialize")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st specializeStatus
	_ = json.NewDecoder(resp.Body).Decode(&st)
	return resp.StatusCode, st
}

// A /specialize meant for another runtime or another pod (a stale address in the gateway's view) is refused
// and leaves the pod generic, ready for the request that is meant for it.
func TestSpecializeMeantForAnotherPodIsRefused(t *testing.T) {
	t.Setenv(podUIDEnv, "uid-of-this-pod")
	a := startAgentWith(t, 1, 2*time.Second, "ok", func(c *Config) {
		c.Generic = genericDeferred
		c.FunctionName = "pool-fake"
		c.RuntimeName = "nodejs20"
	})
	waitReady(t, a.url)
	req := specializeRequest{FunctionName: "hello", Handler: "app.handler", CodeSha256: "abc", MemoryMB: 128,
		TimeoutSeconds: 2, Inline: map[string]string{"app.py": "x"}, Runtime: "python3.12", PodUID: "uid-of-this-pod"}
	if status, _ := postJSON(t, a.url+"/specialize", req); status != http.StatusMisdirectedRequest {
		t.Fatalf("another runtime: %d, want 421", status)
	}
	req.Runtime, req.PodUID = "nodejs20", "uid-of-another-pod"
	if status, _ := postJSON(t, a.url+"/specialize", req); status != http.StatusMisdirectedRequest {
		t.Fatalf("another pod: %d, want 421", status)
	}
	if _, st := getStatus(t, a.url); st.State != "generic" {
		t.Fatalf("after misdirected requests: %+v, want generic", st)
	}
	req.PodUID = "uid-of-this-pod"
	if status, st := postJSON(t, a.url+"/specialize", req); status != 200 || st.FunctionName != "hello" {
		t.Fatalf("the request meant for this pod: %d %+v", status, st)
	}
}

// A generic agent that starts with code in its task root is a restarted container of a specialised pod: it is
// never ready and refuses every /specialize.
func TestAGenericAgentRestartedAfterASpecialisationIsConsumed(t *testing.T) {
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "app.py"), []byte("the first function's"), 0o644); err != nil {
		t.Fatal(err)
	}
	a := startAgentWith(t, 1, 2*time.Second, "ok", func(c *Config) {
		c.Generic = genericDeferred
		c.FunctionName = "pool-fake"
		c.TaskRoot = root
	})
	req := specializeRequest{FunctionName: "second", Handler: "app.handler", CodeSha256: "abc", MemoryMB: 128,
		TimeoutSeconds: 2, Inline: map[string]string{"app.py": "x"}}
	if status, st := postJSON(t, a.url+"/specialize", req); status != http.StatusConflict || st.State != "consumed" {
		t.Fatalf("specialise a consumed pod: %d %+v, want 409 consumed", status, st)
	}
	resp, err := http.Get(a.url + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("readyz of a consumed pod: %d, want 503", resp.StatusCode)
	}
}
