package main

import (
	"net/http/httptest"
	"testing"
	"time"
)

func TestTraceparentGivesTheXRayTraceID(t *testing.T) {
	a := &invokeAPI{cfg: &Config{Timeout: time.Second}}
	cases := []struct {
		name, traceparent, xrayHeader, wantTrace, wantTraceparent string
	}{
		{"sampled", "00-5759e988bd862e3fe1be46a994272793-53995c3f42cd8ad8-01", "",
			"Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
			"00-5759e988bd862e3fe1be46a994272793-53995c3f42cd8ad8-01"},
		{"not sampled", "00-5759e988bd862e3fe1be46a994272793-53995c3f42cd8ad8-00", "",
			"Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=0",
			"00-5759e988bd862e3fe1be46a994272793-53995c3f42cd8ad8-00"},
		{"an X-Ray header wins", "00-5759e988bd862e3fe1be46a994272793-53995c3f42cd8ad8-01",
			"Root=1-00000000-000000000000000000000001;Sampled=1",
			"Root=1-00000000-000000000000000000000001;Sampled=1",
			"00-5759e988bd862e3fe1be46a994272793-53995c3f42cd8ad8-01"},
		{"malformed: ignored", "00-XYZ-53995c3f42cd8ad8-01", "", "", ""},
	}
	for _, c := range cases {
		r := httptest.NewRequest("POST", "/invoke", nil)
		r.Header.Set("Traceparent", c.traceparent)
		if c.xrayHeader != "" {
			r.Header.Set("X-Amzn-Trace-Id", c.xrayHeader)
		}
		inv, err := a.newInvocation(r, []byte(`{}`), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if inv.traceparent != c.wantTraceparent {
			t.Errorf("%s: traceparent %q, want %q", c.name, inv.traceparent, c.wantTraceparent)
		}
		if c.wantTrace == "" {
			if inv.traceID == "" || inv.traceID[:7] != "Root=1-" {
				t.Errorf("%s: no generated trace id: %q", c.name, inv.traceID)
			}
		} else if inv.traceID != c.wantTrace {
			t.Errorf("%s: trace id %q, want %q", c.name, inv.traceID, c.wantTrace)
		}
	}
}
