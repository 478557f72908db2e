package main

import (
	"net/http"
	"sync"
	"time"
)

// inflightAges keeps when each invoke request still being answered arrived, for GET /inflight: a gateway
// replica that becomes the leader counts the calls its dead predecessor sent here (they keep running) by
// their age, so the function's reserved concurrency holds across the hand-over (gateway/limits.py).
type inflightAges struct {
	mu   sync.Mutex
	next uint64
	at   map[uint64]time.Time
}

func newInflightAges() *inflightAges { return &inflightAges{at: map[uint64]time.Time{}} }

// track wraps the invoke handler: a request counts from its arrival until its answer is written.
func (t *inflightAges) track(h http.Handler) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		t.mu.Lock()
		t.next++
		id := t.next
		t.at[id] = time.Now()
		t.mu.Unlock()
		defer func() {
			t.mu.Lock()
			delete(t.at, id)
			t.mu.Unlock()
		}()
		h.ServeHTTP(rw, r)
	})
}

// serveHTTP answers {"agesMs": [...]}: how long ago each request in flight arrived, in milliseconds.
func (t *inflightAges) serveHTTP(rw http.ResponseWriter, _ *http.Request) {
	now := time.Now()
	t.mu.Lock()
	ages := make([]int64, 0, len(t.at))
	for _, at := range t.at {
		ages = append(ages, now.Sub(at).Milliseconds())
	}
	t.mu.Unlock()
	writeJSON(rw, http.StatusOK, map[string]any{"agesMs": ages})
}
