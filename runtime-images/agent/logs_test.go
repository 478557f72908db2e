package main

import (
	"os"
	"regexp"
	"testing"
	"time"
)

func TestFormatReport(t *testing.T) {
	tests := []struct {
		name string
		d    time.Duration
		ri   reportInfo
		want string
	}{
		{"warm", 3120 * time.Microsecond, reportInfo{memoryMB: 128, maxMemMB: 56},
			"REPORT RequestId: r1\tDuration: 3.12 ms\tBilled Duration: 4 ms\tMemory Size: 128 MB\tMax Memory Used: 56 MB\t"},
		{"cold", 3120 * time.Microsecond, reportInfo{memoryMB: 128, maxMemMB: 56, initDur: 200670 * time.Microsecond},
			"REPORT RequestId: r1\tDuration: 3.12 ms\tBilled Duration: 4 ms\tMemory Size: 128 MB\tMax Memory Used: 56 MB\tInit Duration: 200.67 ms\t"},
		{"timeout", 3 * time.Second, reportInfo{memoryMB: 512, status: "timeout"},
			"REPORT RequestId: r1\tDuration: 3000.00 ms\tBilled Duration: 3000 ms\tMemory Size: 512 MB\tMax Memory Used: 0 MB\tStatus: timeout\t"},
		{"error", time.Millisecond, reportInfo{memoryMB: 128, status: "error", errType: "Runtime.ExitError"},
			"REPORT RequestId: r1\tDuration: 1.00 ms\tBilled Duration: 1 ms\tMemory Size: 128 MB\tMax Memory Used: 0 MB\tStatus: error\tError Type: Runtime.ExitError\t"},
		{"substituted", time.Millisecond, reportInfo{memoryMB: 128, maxMemMB: 9, subst: "python3.13 on /usr/bin/python3.11 (3.11.7)"},
			"REPORT RequestId: r1\tDuration: 1.00 ms\tBilled Duration: 1 ms\tMemory Size: 128 MB\tMax Memory Used: 9 MB\tRuntime Substitute: python3.13 on /usr/bin/python3.11 (3.11.7)\t"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := formatReport("r1", tt.d, tt.ri); got != tt.want {
				t.Errorf("got  %q\nwant %q", got, tt.want)
			}
		})
	}
	// The form log parsers rely on.
	re := regexp.MustCompile(`^REPORT RequestId: (\S+)\tDuration: ([\d.]+) ms\tBilled Duration: (\d+) ms\tMemory Size: (\d+) MB\tMax Memory Used: (\d+) MB\t`)
	if !re.MatchString(tests[1].want) {
		t.Error("REPORT regexp does not match")
	}
}

func TestBilledMs(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want int64
	}{{0, 1}, {time.Microsecond, 1}, {time.Millisecond, 1}, {1001 * time.Microsecond, 2}, {2500 * time.Millisecond, 2500}}
	for _, tt := range tests {
		if got := billedMs(tt.d); got != tt.want {
			t.Errorf("billedMs(%v) = %d, want %d", tt.d, got, tt.want)
		}
	}
}

func TestVmHWM(t *testing.T) {
	tests := []struct {
		status string
		want   int
	}{
		{"Name:\tpython3\nVmPeak:\t  1 kB\nVmHWM:\t   57344 kB\nVmRSS:\t 1 kB\n", 56},
		{"VmHWM:\t   57345 kB\n", 57},
		{"VmHWM:", 0},
		{"Name: x\n", 0},
		{"VmHWM: lots kB\n", 0},
	}
	for _, tt := range tests {
		if got := vmHWMMB([]byte(tt.status)); got != tt.want {
			t.Errorf("vmHWMMB(%q) = %d, want %d", tt.status, got, tt.want)
		}
	}
}

func TestRSSReader(t *testing.T) {
	var r rssReader
	defer r.close()
	if got := r.peakMB(os.Getpid()); got < 1 || got > 4096 {
		t.Errorf("peak RSS of the test process = %d MB", got)
	}
	if got := r.peakMB(os.Getpid()); got < 1 { // the second read reuses the open file
		t.Errorf("second read = %d MB", got)
	}
	var none rssReader
	if got := none.peakMB(0); got != 0 {
		t.Errorf("pid 0 gave %d", got)
	}
}
