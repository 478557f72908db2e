package main

import (
	"bytes"
	"os"
	"strconv"
)

// peakRSSMB is the peak resident set size (VmHWM) of pid in MB, rounded up; 0 if unknown.
func peakRSSMB(pid int) int {
	if pid <= 0 {
		return 0
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	return vmHWMMB(b)
}

func vmHWMMB(status []byte) int {
	i := bytes.Index(status, []byte("VmHWM:"))
	if i < 0 {
		return 0
	}
	rest := status[i+len("VmHWM:"):]
	if j := bytes.IndexByte(rest, '\n'); j >= 0 {
		rest = rest[:j]
	}
	f := bytes.Fields(rest) // e.g. ["56320", "kB"]
	if len(f) == 0 {
		return 0
	}
	kb, err := strconv.Atoi(string(f[0]))
	if err != nil {
		return 0
	}
	return (kb + 1023) / 1024
}
