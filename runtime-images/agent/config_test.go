package main

import (
	"strings"
	"testing"
	"time"
)

func TestParseConfig(t *testing.T) {
	dir := t.TempDir()
	base := []string{"--task-root", dir}
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantErr string
		check   func(t *testing.T, c *Config)
	}{
		{name: "defaults", args: append(base, "--", "rt"), check: func(t *testing.T, c *Config) {
			if c.Listen != ":8080" || c.RuntimeAPI != "127.0.0.1:9001" || c.Workers != 1 || c.Timeout != 3*time.Second ||
				c.MemoryMB != 128 || c.FunctionVersion != "$LATEST" || c.MaxRequest != 6291456 {
				t.Errorf("unexpected defaults: %+v", c)
			}
			if c.FunctionARN != "arn:aws:lambda:us-east-1:000000000000:function:function" {
				t.Errorf("arn = %q", c.FunctionARN)
			}
		}},
		{name: "layers and extensions folders", args: append(base, "--", "rt"), check: func(t *testing.T, c *Config) {
			if c.OptDir != "/opt" || c.ExtensionsDir != "/opt/extensions" {
				t.Errorf("opt %q, extensions %q", c.OptDir, c.ExtensionsDir)
			}
		}},
		{name: "opt dir moves the extensions", args: append(base, "--opt-dir", dir, "--", "rt"), check: func(t *testing.T, c *Config) {
			if c.ExtensionsDir != dir+"/extensions" {
				t.Errorf("extensions %q", c.ExtensionsDir)
			}
		}},
		{name: "no extensions", args: append(base, "--extensions-dir", "none", "--", "rt"), check: func(t *testing.T, c *Config) {
			if c.ExtensionsDir != "" {
				t.Errorf("extensions %q", c.ExtensionsDir)
			}
		}},
		{name: "no opt dir, no extensions", args: append(base, "--opt-dir=", "--", "rt"), check: func(t *testing.T, c *Config) {
			if c.OptDir != "" || c.ExtensionsDir != "" {
				t.Errorf("opt %q, extensions %q", c.OptDir, c.ExtensionsDir)
			}
		}},
		{name: "env", args: base, env: map[string]string{
			"KUBELAMBDA_WORKERS": "4", "KUBELAMBDA_TIMEOUT": "1.5", "KUBELAMBDA_RUNTIME_CMD": `["python3", "-u", "b.py"]`,
			"KUBELAMBDA_RUNTIME_API": "127.0.3.7:9001", "KUBELAMBDA_FUNCTION_NAME": "hello",
		}, check: func(t *testing.T, c *Config) {
			if c.Workers != 4 || c.Timeout != 1500*time.Millisecond || strings.Join(c.RuntimeCmd, " ") != "python3 -u b.py" {
				t.Errorf("env not applied: %+v", c)
			}
			if c.workerAddr(3) != "127.0.3.7:9004" {
				t.Errorf("workerAddr(3) = %s", c.workerAddr(3))
			}
		}},
		{name: "only the KUBELAMBDA_ vocabulary is read", args: append(base, "--", "rt"), env: map[string]string{
			"AWS_LAMBDA_FUNCTION_NAME": "lambda-name", "AWS_REGION": "eu-west-1", "_HANDLER": "lambda.handler",
			"LAMBDA_RUNTIME_DIR": "/elsewhere", "KUBELAMBDA_HANDLER": "app.handler",
		}, check: func(t *testing.T, c *Config) {
			if c.FunctionName != "function" || c.Region != "us-east-1" || c.Handler != "app.handler" ||
				c.RuntimeDir != "/opt/kubelambda/runtime" {
				t.Errorf("read a Lambda variable as input: %+v", c)
			}
		}},
		{name: "flags win over env", args: append(base, "--workers", "2", "--", "rt"),
			env: map[string]string{"KUBELAMBDA_WORKERS": "4"}, check: func(t *testing.T, c *Config) {
				if c.Workers != 2 {
					t.Errorf("workers = %d", c.Workers)
				}
			}},
		{name: "duration timeout", args: append(base, "--timeout", "500ms", "--", "rt"), check: func(t *testing.T, c *Config) {
			if c.Timeout != 500*time.Millisecond || c.DrainTimeout != 500*time.Millisecond {
				t.Errorf("timeout = %v drain = %v", c.Timeout, c.DrainTimeout)
			}
		}},
		{name: "space separated command", args: base, env: map[string]string{"KUBELAMBDA_RUNTIME_CMD": "node index.mjs"},
			check: func(t *testing.T, c *Config) {
				if len(c.RuntimeCmd) != 2 {
					t.Errorf("cmd = %q", c.RuntimeCmd)
				}
			}},
		{name: "generic modes", args: append(base, "--generic", "prestart", "--", "rt"), check: func(t *testing.T, c *Config) {
			if c.Generic != genericPrestart {
				t.Errorf("generic = %v", c.Generic)
			}
		}},
		{name: "generic from env", args: base, env: map[string]string{"KUBELAMBDA_GENERIC": "deferred", "KUBELAMBDA_RUNTIME_CMD": "rt"},
			check: func(t *testing.T, c *Config) {
				if c.Generic != genericDeferred {
					t.Errorf("generic = %v", c.Generic)
				}
			}},
		{name: "bad generic mode", args: append(base, "--generic", "maybe", "--", "rt"), wantErr: `invalid generic (KUBELAMBDA_GENERIC) "maybe"`},
		{name: "no command", args: base, wantErr: "no runtime command"},
		{name: "zero workers", args: append(base, "--workers", "0", "--", "rt"), wantErr: `invalid workers (KUBELAMBDA_WORKERS) "0"`},
		{name: "bad timeout", args: append(base, "--timeout", "soon", "--", "rt"), wantErr: "invalid timeout"},
		{name: "timeout too long", args: append(base, "--timeout", "901", "--", "rt"), wantErr: "between 100ms and 900s"},
		{name: "memory too small", args: append(base, "--memory-mb", "64", "--", "rt"), wantErr: "invalid memory-mb"},
		{name: "bad listen", args: append(base, "--listen", "8080", "--", "rt"), wantErr: "invalid listen"},
		{name: "runtime api needs ip", args: append(base, "--runtime-api", ":9001", "--", "rt"), wantErr: "needs an IP"},
		{name: "runtime api port range", args: append(base, "--runtime-api", "127.0.0.1:65535", "--workers", "2", "--", "rt"),
			wantErr: "exceeds 65535"},
		{name: "missing task root", args: []string{"--task-root", dir + "/nope", "--", "rt"}, wantErr: "invalid task-root"},
		{name: "bad json command", args: base, env: map[string]string{"KUBELAMBDA_RUNTIME_CMD": `["a",`}, wantErr: "JSON array"},
		{name: "several errors at once", args: append(base, "--workers", "x", "--memory-mb", "1", "--", "rt"),
			wantErr: "invalid memory-mb"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseConfig(tt.args, func(k string) (string, bool) { v, ok := tt.env[k]; return v, ok })
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, c)
		})
	}
}

func TestWorkerEnv(t *testing.T) {
	c := &Config{Handler: "app.handler", TaskRoot: "/var/task", RuntimeDir: "/opt/rt", FunctionName: "hello",
		FunctionVersion: "$LATEST", MemoryMB: 256, Region: "eu-west-1", RuntimeName: "python3.12"}
	env := workerEnv(c, []string{"PATH=/bin", "KUBELAMBDA_WORKERS=4", "AWS_LAMBDA_RUNTIME_API=x", "_HANDLER=old", "TZ=Europe/Paris"})
	got := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		if _, dup := got[k]; dup {
			t.Errorf("duplicate %s", k)
		}
		got[k] = v
	}
	want := map[string]string{
		"PATH": "/bin", "_HANDLER": "app.handler", "LAMBDA_TASK_ROOT": "/var/task", "LAMBDA_RUNTIME_DIR": "/opt/rt",
		"AWS_LAMBDA_FUNCTION_NAME": "hello", "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
		"AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/hello", "AWS_REGION": "eu-west-1", "AWS_EXECUTION_ENV": "AWS_Lambda_python3.12",
		"TZ": "Europe/Paris", "LANG": "en_US.UTF-8",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	for _, k := range []string{"KUBELAMBDA_WORKERS", "AWS_LAMBDA_RUNTIME_API"} {
		if _, ok := got[k]; ok {
			t.Errorf("%s leaked into the runtime's environment", k)
		}
	}
	if !strings.Contains(got["AWS_LAMBDA_LOG_STREAM_NAME"], "/[$LATEST]") {
		t.Errorf("log stream = %q", got["AWS_LAMBDA_LOG_STREAM_NAME"])
	}
}

func TestAgentProcs(t *testing.T) {
	tests := []struct {
		name                   string
		workers, current, want int
		fromEnv                bool
	}{
		{"one worker on two CPUs", 1, 2, 1, false},
		{"as many workers as CPUs", 2, 2, 2, false},
		{"more workers than CPUs", 8, 2, 2, false},
		{"four workers on sixteen CPUs", 4, 16, 4, false},
		{"GOMAXPROCS set by the pod", 1, 2, 2, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := agentProcs(tt.workers, tt.current, tt.fromEnv); got != tt.want {
				t.Errorf("agentProcs(%d, %d, %v) = %d, want %d", tt.workers, tt.current, tt.fromEnv, got, tt.want)
			}
		})
	}
}
