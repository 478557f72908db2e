package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLayerPaths(t *testing.T) {
	get := func(env []string, key string) string {
		for _, kv := range env {
			if k, v, _ := cut(kv, '='); k == key {
				return v
			}
		}
		return "<unset>"
	}
	base := []string{"PATH=/usr/bin:/bin", "NODE_PATH=/opt/nodejs/node_modules:/var/task/node_modules"}
	for _, c := range []struct{ runtime, key, want string }{
		{"python3.12", "PATH", "/usr/bin:/bin:/opt/bin"},
		{"python3.12", "LD_LIBRARY_PATH", "/opt/lib"},
		{"python3.12", "PYTHONPATH", "/opt/python/lib/python3.12/site-packages:/opt/python"},
		{"nodejs20", "NODE_PATH", "/opt/nodejs/node20/node_modules:/opt/nodejs/node_modules:/var/task/node_modules"},
		{"ruby3.3", "GEM_PATH", "/opt/ruby/gems/3.3.0"},
		{"ruby3.3", "RUBYLIB", "/opt/ruby/lib"},
		{"provided", "PYTHONPATH", "<unset>"},
	} {
		env := withLayerPaths(&Config{OptDir: "/opt", RuntimeName: c.runtime}, base)
		if got := get(env, c.key); got != c.want {
			t.Errorf("%s %s = %q, want %q", c.runtime, c.key, got, c.want)
		}
	}
	if env := withLayerPaths(&Config{RuntimeName: "python3.12"}, base); len(env) != len(base) {
		t.Errorf("no opt dir, yet %v", env)
	}
}

// A runtime started by the agent sees the layer folders on its paths.
func TestRuntimeSeesLayerPaths(t *testing.T) {
	opt := t.TempDir()
	a := startAgentWith(t, 1, 5*time.Second, "echo", func(c *Config) { c.OptDir, c.RuntimeName = opt, "python3.12" })
	waitFor(t, "readiness", a.pool.isReady)
	_, body := a.invoke(t, `{"env":"PYTHONPATH"}`)
	if want := `"` + opt + "/python/lib/python3.12/site-packages:" + opt + `/python"`; body != want {
		t.Errorf("PYTHONPATH %s, want %s", body, want)
	}
}

func TestCopyTree(t *testing.T) {
	src, dst := t.TempDir(), filepath.Join(t.TempDir(), "kubelambda")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(src, "bin"), 0o755))
	must(os.WriteFile(filepath.Join(src, "bin", "agent"), []byte("#!/bin/sh\n"), 0o755))
	must(os.MkdirAll(filepath.Join(src, "runtime"), 0o755))
	must(os.WriteFile(filepath.Join(src, "runtime", "bootstrap.py"), []byte("print()\n"), 0o644))
	must(os.Symlink("bootstrap.py", filepath.Join(src, "runtime", "link.py")))
	n, err := copyTree(src, dst)
	must(err)
	if n != 3 {
		t.Errorf("copied %d files, want 3", n)
	}
	st, err := os.Stat(filepath.Join(dst, "bin", "agent"))
	must(err)
	if st.Mode().Perm() != 0o755 {
		t.Errorf("agent mode %v", st.Mode())
	}
	if link, err := os.Readlink(filepath.Join(dst, "runtime", "link.py")); err != nil || link != "bootstrap.py" {
		t.Errorf("link %q %v", link, err)
	}
	if err := copyOpt(nil, func(string) string { return "" }); err == nil || !strings.Contains(err.Error(), "usage") {
		t.Errorf("copy-opt without DEST: %v", err)
	}
}

// --workdir (Lambda's ImageConfig.WorkingDirectory) is the runtime's working directory; the task root otherwise.
func TestWorkDir(t *testing.T) {
	dir := t.TempDir()
	a := startAgentWith(t, 1, 5*time.Second, "echo", func(c *Config) { c.WorkDir = dir })
	waitFor(t, "readiness", a.pool.isReady)
	if _, body := a.invoke(t, `{"cwd":true}`); body != `"`+dir+`"` {
		t.Errorf("cwd %s, want %s", body, dir)
	}
	b := startAgent(t, 1, 5*time.Second, "echo")
	waitFor(t, "readiness", b.pool.isReady)
	if _, body := b.invoke(t, `{"cwd":true}`); body != `"`+b.pool.cfg.TaskRoot+`"` {
		t.Errorf("cwd %s, want the task root %s", body, b.pool.cfg.TaskRoot)
	}
}
