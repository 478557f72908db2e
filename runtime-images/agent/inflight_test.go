package main

import (
	"encoding/json"
	"net/http"
	"sync"
	"testing"
	"time"
)

func inflightAgesOf(t *testing.T, a *testAgent) []int64 {
	t.Helper()
	resp, err := http.Get(a.url + "/inflight")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got struct {
		AgesMs []int64 `json:"agesMs"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /inflight: %d %v", resp.StatusCode, err)
	}
	return got.AgesMs
}

// GET /inflight lists the age of each invoke request being answered, and forgets it once answered.
func TestInflightAges(t *testing.T) {
	a := startAgent(t, 2, 5*time.Second, "echo")
	waitFor(t, "readiness", a.pool.isReady)
	if ages := inflightAgesOf(t, a); len(ages) != 0 {
		t.Fatalf("idle agent: %v", ages)
	}
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.invoke(t, `{"sleep_ms":1500}`)
		}()
	}
	waitFor(t, "two invocations in flight", func() bool { return a.pool.metrics.inflight.Load() == 2 })
	time.Sleep(300 * time.Millisecond) // ages grow: at least this old now
	ages := inflightAgesOf(t, a)
	if len(ages) != 2 || ages[0] < 300 || ages[1] < 300 {
		t.Errorf("two calls in flight for >= 300 ms: %v", ages)
	}
	wg.Wait()
	if ages := inflightAgesOf(t, a); len(ages) != 0 {
		t.Errorf("answered calls still listed: %v", ages)
	}
}
