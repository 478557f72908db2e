//go:build linux

package main

import "syscall"

// preventDumps marks the agent non-dumpable: /proc/<pid>/environ and /proc/<pid>/mem become root's, so
// function code running as the same user cannot read the agent's tokens there.
func preventDumps() {
	_, _, _ = syscall.RawSyscall(syscall.SYS_PRCTL, syscall.PR_SET_DUMPABLE, 0, 0)
}
