package main

// The Function's layers are unpacked into /opt (Config.OptDir) before the agent starts (docs/extensions.md).
// As on Lambda, their conventional folders go on the runtime's search paths: /opt/bin on PATH, /opt/lib on
// LD_LIBRARY_PATH, /opt/python (and its lib/pythonX.Y/site-packages) on PYTHONPATH, /opt/nodejs/nodeNN/node_modules
// and /opt/nodejs/node_modules on NODE_PATH, /opt/ruby/gems/X.Y.0 on GEM_PATH and /opt/ruby/lib on RUBYLIB.

import (
	"path/filepath"
	"strings"
)

// withLayerPaths adds the layer folders to env's search path variables: PATH and LD_LIBRARY_PATH get them
// last, the language paths first (after the task root, which the runtime clients put first themselves).
func withLayerPaths(c *Config, env []string) []string {
	if c.OptDir == "" {
		return env
	}
	opt := c.OptDir
	type add struct {
		key     string
		paths   []string
		prepend bool
	}
	adds := []add{
		{"PATH", []string{filepath.Join(opt, "bin")}, false},
		{"LD_LIBRARY_PATH", []string{filepath.Join(opt, "lib")}, false},
	}
	rt := c.RuntimeName
	switch {
	case strings.HasPrefix(rt, "python"):
		ver := strings.TrimPrefix(rt, "python")
		adds = append(adds, add{"PYTHONPATH", []string{
			filepath.Join(opt, "python", "lib", "python"+ver, "site-packages"), filepath.Join(opt, "python")}, true})
	case strings.HasPrefix(rt, "nodejs"):
		major := strings.TrimSuffix(strings.TrimPrefix(rt, "nodejs"), ".x")
		adds = append(adds, add{"NODE_PATH", []string{
			filepath.Join(opt, "nodejs", "node"+major, "node_modules"), filepath.Join(opt, "nodejs", "node_modules")}, true})
	case strings.HasPrefix(rt, "ruby"):
		ver := strings.TrimPrefix(rt, "ruby")
		adds = append(adds,
			add{"GEM_PATH", []string{filepath.Join(opt, "ruby", "gems", ver+".0")}, true},
			add{"RUBYLIB", []string{filepath.Join(opt, "ruby", "lib")}, true})
	}
	out := append([]string(nil), env...)
	for _, a := range adds {
		idx, cur := -1, ""
		for i, kv := range out {
			if k, v, _ := cut(kv, '='); k == a.key {
				idx, cur = i, v
			}
		}
		var parts []string
		if cur != "" {
			parts = strings.Split(cur, ":")
		}
		var fresh []string
		for _, p := range a.paths {
			if !contains(parts, p) {
				fresh = append(fresh, p)
			}
		}
		if a.prepend {
			parts = append(fresh, parts...)
		} else {
			parts = append(parts, fresh...)
		}
		kv := a.key + "=" + strings.Join(parts, ":")
		if idx >= 0 {
			out[idx] = kv
		} else {
			out = append(out, kv)
		}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
