package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// A request the gateway sends on a kept-alive connection just after the agent began shutting down gets an
// answer (with Connection: close), not a connection closed under it: that drop had no answer, and the gateway
// could not tell whether the invocation ran (a 500 for the caller).
func TestShutdownAnswersOnKeptAliveConnectionsBeforeClosing(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gate := &frontGate{next: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusServiceUnavailable) // as the pool answers while draining
	})}
	front := &http.Server{Handler: gate}
	go func() { _ = front.Serve(ln) }()
	url := "http://" + ln.Addr().String() + "/invoke"
	var dials atomic.Int32
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(_ context.Context, network, addr string) (net.Conn, error) {
			dials.Add(1)
			return net.Dial(network, addr)
		},
	}}
	post := func() *http.Response {
		resp, err := client.Post(url, "application/json", bytes.NewReader([]byte("{}")))
		if err != nil {
			t.Fatalf("POST on the kept-alive connection: %v", err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		return resp
	}
	if resp := post(); resp.Close {
		t.Fatal("an answer before the shutdown closed the connection")
	}
	stopped := make(chan struct{})
	go func() {
		stopServing(front, gate, 300*time.Millisecond, 5*time.Second)
		close(stopped)
	}()
	for !gate.closing.Load() {
		time.Sleep(time.Millisecond)
	}
	resp := post() // the same connection: the server has begun to stop
	if !resp.Close || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("answer while stopping: %d, Connection: close %v", resp.StatusCode, resp.Close)
	}
	if n := dials.Load(); n != 1 {
		t.Fatalf("%d connections, want the one kept alive", n)
	}
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("the server did not stop once requests stopped")
	}
	if _, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		t.Fatal("still listening after stopServing")
	}
}
