package main

import (
	"os/exec"
	"testing"
)

func TestOOMCounterPath(t *testing.T) {
	v1 := "9:name=systemd:/\n4:memory:/process_api/abc\n1:cpu:/\n0::/\n"
	v2 := "0::/kubepods/pod1/c1\n"
	cases := []struct {
		name, cgroup string
		present      []string
		want         string
	}{
		{"v1 nested", v1, []string{"/r/memory/process_api/abc/memory.oom_control", "/r/memory/memory.oom_control"},
			"/r/memory/process_api/abc/memory.oom_control"},
		{"v1 namespaced: the container's cgroup is the mount's root", v1, []string{"/r/memory/memory.oom_control"},
			"/r/memory/memory.oom_control"},
		{"v1 co-mounted controllers", "5:memory,hugetlb:/\n", []string{"/r/memory/memory.oom_control"},
			"/r/memory/memory.oom_control"},
		{"v2", v2, []string{"/r/kubepods/pod1/c1/memory.events", "/r/memory.events"}, "/r/kubepods/pod1/c1/memory.events"},
		{"v2 namespaced", "0::/\n", []string{"/r/memory.events"}, "/r/memory.events"},
		{"none", v1, nil, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			exists := func(p string) bool {
				for _, q := range tc.present {
					if p == q {
						return true
					}
				}
				return false
			}
			if got := oomCounterPath([]byte(tc.cgroup), "/r", exists); got != tc.want {
				t.Fatalf("oomCounterPath = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestOOMKillCount(t *testing.T) {
	v1 := "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"
	v2 := "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n"
	for in, want := range map[string]int64{v1: 3, v2: 2, "oom_kill_disable 0\n": 0, "": 0} {
		if got := oomKillCount([]byte(in)); got != want {
			t.Errorf("oomKillCount(%q) = %d, want %d", in, got, want)
		}
	}
	var c *oomCounter
	if c.kills() != 0 || (&oomCounter{}).kills() != 0 {
		t.Fatal("an unknown counter must read 0")
	}
}

func TestKilledBySIGKILL(t *testing.T) {
	killed := exec.Command("sh", "-c", "kill -9 $$")
	failed := exec.Command("sh", "-c", "exit 3")
	terminated := exec.Command("sh", "-c", "kill -15 $$")
	for cmd, want := range map[*exec.Cmd]bool{killed: true, failed: false, terminated: false} {
		err := cmd.Run()
		if got := killedBySIGKILL(err); got != want {
			t.Errorf("%v: killedBySIGKILL(%v) = %v, want %v", cmd.Args, err, got, want)
		}
	}
	if killedBySIGKILL(nil) {
		t.Error("a clean exit is not a kill")
	}
}
