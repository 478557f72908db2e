package main

import (
	"fmt"
	"io"
	"math"
	"net/http"
	"sync/atomic"
	"time"
)

// Prometheus metrics, written in the text exposition format without a client library.
type metrics struct {
	invocations       [numOutcomes]atomic.Uint64
	duration          *histogram
	initDuration      *histogram
	inflight          atomic.Int64
	timeouts          atomic.Uint64
	restarts          atomic.Uint64
	requestTooLarge   atomic.Uint64
	invalidRequest    atomic.Uint64
	maxMemory         *histogram // Max Memory Used of each REPORT, in MB
	oomKills          atomic.Uint64
	workersConfigured int
	memoryMB          atomic.Int64 // the function's memoryMB (a warm-pool pod learns it on /specialize)
	ship              *shipper     // log shipping's counters (logship.go); nil = off
}

// memoryBuckets (MB) span Lambda's memory sizes, 128 MB to 10,240 MB.
var memoryBuckets = []float64{16, 32, 64, 128, 256, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192, 10240}

var durationBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900}

func newMetrics(workers int) *metrics {
	return &metrics{
		duration:          newHistogram(durationBuckets),
		initDuration:      newHistogram(durationBuckets),
		maxMemory:         newHistogram(memoryBuckets),
		workersConfigured: workers,
	}
}

type histogram struct {
	bounds   []float64
	counts   []atomic.Uint64 // per bucket, not cumulative; the last is +Inf
	sumMicro atomic.Uint64   // the sum of the observed values, in millionths
	count    atomic.Uint64
}

func newHistogram(bounds []float64) *histogram {
	return &histogram{bounds: bounds, counts: make([]atomic.Uint64, len(bounds)+1)}
}

func (h *histogram) observe(d time.Duration) { h.observeValue(d.Seconds()) }

func (h *histogram) observeValue(s float64) {
	i := len(h.bounds)
	for j, b := range h.bounds {
		if s <= b {
			i = j
			break
		}
	}
	h.counts[i].Add(1)
	h.sumMicro.Add(uint64(max(s, 0) * 1e6))
	h.count.Add(1)
}

func (h *histogram) write(w io.Writer, name, help string) {
	fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name)
	var cum uint64
	for i, b := range h.bounds {
		cum += h.counts[i].Load()
		fmt.Fprintf(w, "%s_bucket{le=\"%g\"} %d\n", name, b, cum)
	}
	cum += h.counts[len(h.bounds)].Load()
	fmt.Fprintf(w, "%s_bucket{le=\"+Inf\"} %d\n", name, cum)
	fmt.Fprintf(w, "%s_sum %g\n", name, float64(h.sumMicro.Load())/1e6)
	fmt.Fprintf(w, "%s_count %d\n", name, cum)
}

func (m *metrics) record(o outcome, d time.Duration) {
	m.invocations[o].Add(1)
	if o != outRefusedBusy && o != outRefusedDraining && !math.IsNaN(d.Seconds()) {
		m.duration.observe(d)
	}
}

func (m *metrics) serveHTTP(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	fmt.Fprintf(w, "# HELP kubelambda_agent_invocations_total Invocations by outcome.\n"+
		"# TYPE kubelambda_agent_invocations_total counter\n")
	for o := outcome(0); o < numOutcomes; o++ {
		fmt.Fprintf(w, "kubelambda_agent_invocations_total{outcome=%q} %d\n", outcomeNames[o], m.invocations[o].Load())
	}
	fmt.Fprintf(w, "kubelambda_agent_invocations_total{outcome=\"request_too_large\"} %d\n", m.requestTooLarge.Load())
	fmt.Fprintf(w, "kubelambda_agent_invocations_total{outcome=\"invalid_request\"} %d\n", m.invalidRequest.Load())
	m.duration.write(w, "kubelambda_agent_invocation_duration_seconds",
		"Time from the invoke request to the function's answer, for admitted invocations.")
	m.initDuration.write(w, "kubelambda_agent_init_duration_seconds",
		"Time from starting a runtime process to its first request for an event.")
	fmt.Fprintf(w, "# HELP kubelambda_agent_inflight_invocations Admitted invocations not yet answered.\n"+
		"# TYPE kubelambda_agent_inflight_invocations gauge\nkubelambda_agent_inflight_invocations %d\n", m.inflight.Load())
	fmt.Fprintf(w, "# HELP kubelambda_agent_workers Runtime workers configured (perInstance).\n"+
		"# TYPE kubelambda_agent_workers gauge\nkubelambda_agent_workers %d\n", m.workersConfigured)
	fmt.Fprintf(w, "# HELP kubelambda_agent_timeouts_total Invocations that ran past the function timeout.\n"+
		"# TYPE kubelambda_agent_timeouts_total counter\nkubelambda_agent_timeouts_total %d\n", m.timeouts.Load())
	fmt.Fprintf(w, "# HELP kubelambda_agent_worker_restarts_total Runtime processes started again after exiting or being killed.\n"+
		"# TYPE kubelambda_agent_worker_restarts_total counter\nkubelambda_agent_worker_restarts_total %d\n", m.restarts.Load())
	m.maxMemory.write(w, "kubelambda_agent_max_memory_used_megabytes",
		"Max Memory Used of each invocation's REPORT (the runtime's peak RSS), in MB.")
	fmt.Fprintf(w, "# HELP kubelambda_agent_memory_size_megabytes The function's memory size (memoryMB).\n"+
		"# TYPE kubelambda_agent_memory_size_megabytes gauge\nkubelambda_agent_memory_size_megabytes %d\n", m.memoryMB.Load())
	fmt.Fprintf(w, "# HELP kubelambda_agent_oom_kills_total Invocations that ended in Runtime.OutOfMemory.\n"+
		"# TYPE kubelambda_agent_oom_kills_total counter\nkubelambda_agent_oom_kills_total %d\n", m.oomKills.Load())
	m.ship.writeMetrics(w)
}

// report counts what an invocation's REPORT says: its Max Memory Used, and an OOM kill.
func (m *metrics) report(ri reportInfo) {
	if ri.maxMemMB > 0 {
		m.maxMemory.observeValue(float64(ri.maxMemMB))
	}
	if ri.errType == "Runtime.OutOfMemory" {
		m.oomKills.Add(1)
	}
}
