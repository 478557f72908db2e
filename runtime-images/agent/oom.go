package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
)

// oomCounter reads the kernel's count of OOM kills in the agent's own memory cgroup: the container's,
// whether a real container runtime or the local process node made it. A runtime process that dies of
// SIGKILL while that count goes up was killed for running out of memory (Runtime.OutOfMemory), not by
// something else.
type oomCounter struct {
	path string // memory.oom_control (cgroup v1) or memory.events (v2); "" when there is none
}

// newOOMCounter finds the counter from /proc/self/cgroup.
func newOOMCounter() *oomCounter {
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return &oomCounter{}
	}
	return &oomCounter{path: oomCounterPath(data, "/sys/fs/cgroup", fileExists)}
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// oomCounterPath is the first counter file that exists: the cgroup /proc/self/cgroup names, then the
// hierarchy's root (inside a container the cgroup is often mounted as the root).
func oomCounterPath(procSelfCgroup []byte, root string, exists func(string) bool) string {
	var candidates []string
	var unified string
	for _, line := range strings.Split(string(procSelfCgroup), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[1] == "" {
			unified = parts[2]
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			if c == "memory" {
				candidates = append(candidates,
					root+"/memory"+strings.TrimSuffix(parts[2], "/")+"/memory.oom_control",
					root+"/memory/memory.oom_control")
			}
		}
	}
	if len(candidates) == 0 && unified != "" {
		candidates = append(candidates,
			root+strings.TrimSuffix(unified, "/")+"/memory.events", root+"/memory.events")
	}
	for _, c := range candidates {
		if exists(c) {
			return c
		}
	}
	return ""
}

// kills is the OOM kill count so far; 0 when unknown.
func (c *oomCounter) kills() int64 {
	if c == nil || c.path == "" {
		return 0
	}
	data, err := os.ReadFile(c.path)
	if err != nil {
		return 0
	}
	return oomKillCount(data)
}

// oomKillCount reads the "oom_kill N" line of memory.oom_control or memory.events.
func oomKillCount(data []byte) int64 {
	for _, line := range bytes.Split(data, []byte("\n")) {
		f := bytes.Fields(line)
		if len(f) == 2 && string(f[0]) == "oom_kill" {
			n, err := strconv.ParseInt(string(f[1]), 10, 64)
			if err == nil {
				return n
			}
		}
	}
	return 0
}

// killedBySIGKILL reports whether a process's wait error says SIGKILL ended it.
func killedBySIGKILL(waitErr error) bool {
	var exitErr *exec.ExitError
	if !errors.As(waitErr, &exitErr) {
		return false
	}
	ws, ok := exitErr.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}
