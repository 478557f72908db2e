package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Lambda's synchronous payload limit (request and response), in bytes.
const defaultMaxPayload = 6 * 1024 * 1024

// Config is the agent's whole configuration. Every field can be set by a flag or by the
// KUBELAMBDA_* environment variable named in its flag's help; flags win over the environment. The agent
// reads no Lambda variable (AWS_*, _HANDLER, LAMBDA_*): it derives them for the runtime from this, in
// workerEnv, the one place they are written.
type Config struct {
	Listen          string        // invoke, metrics and health endpoints, host:port
	RuntimeAPI      string        // Runtime API of worker 0, host:port; worker i listens on port+i
	Workers         int           // runtime worker processes (perInstance concurrency)
	Timeout         time.Duration // function timeout
	MemoryMB        int           // reported to the runtime and in REPORT lines
	FunctionName    string        // AWS_LAMBDA_FUNCTION_NAME
	FunctionVersion string        // AWS_LAMBDA_FUNCTION_VERSION
	FunctionARN     string        // default invoked function ARN
	Region          string        // AWS_REGION
	Handler         string        // _HANDLER
	TaskRoot        string        // LAMBDA_TASK_ROOT: the function's code
	RuntimeDir      string        // LAMBDA_RUNTIME_DIR: the runtime client
	RuntimeName     string        // AWS_EXECUTION_ENV suffix, e.g. python3.12
	RuntimeSubst    string        // dev clusters only: "python3.13 on /usr/bin/python3.11 (3.11.7)", logged and in REPORT
	RuntimeCmd      []string      // argv of one worker process
	MaxRequest      int           // invoke request body limit, bytes
	MaxResponse     int           // runtime response body limit, bytes
	DrainTimeout    time.Duration // how long SIGTERM waits for in-flight invocations
	Generic         genericMode   // warm-pool pod: wait for POST /specialize (see specialize.go)
	ExtensionsDir   string        // external extensions started in every environment (extensions.go); "" for none
	OptDir          string        // where the Function's layers are (/opt); their paths go into the runtime's environment
	WorkDir         string        // the workers' working directory; default TaskRoot (Lambda's ImageConfig.WorkingDirectory)
	Log             logShipConfig // log shipping to the log store (logship.go)
	Format          logFormat     // Lambda's LoggingConfig: Text or JSON, levels (logformat.go)
}

type envLookup func(string) (string, bool)

// parseConfig reads flags (args, without the program name) over the environment and validates the result.
// The runtime command is everything after "--", or KUBELAMBDA_RUNTIME_CMD (a JSON array or a
// space-separated string).
func parseConfig(args []string, getenv envLookup) (*Config, error) {
	env := func(key, def string) string {
		if v, ok := getenv(key); ok && v != "" {
			return v
		}
		return def
	}
	fs := flag.NewFlagSet("kubelambda-agent", flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	listen := fs.String("listen", env("KUBELAMBDA_LISTEN", ":8080"),
		"invoke, metrics and health address `host:port` (env KUBELAMBDA_LISTEN)")
	runtimeAPI := fs.String("runtime-api", env("KUBELAMBDA_RUNTIME_API", "127.0.0.1:9001"),
		"Runtime API address of worker 0; worker i uses port+i (env KUBELAMBDA_RUNTIME_API)")
	workers := fs.String("workers", env("KUBELAMBDA_WORKERS", "1"),
		"runtime worker processes, each serving one invocation at a time (env KUBELAMBDA_WORKERS)")
	timeout := fs.String("timeout", env("KUBELAMBDA_TIMEOUT", "3"),
		"function timeout: seconds (\"3\", \"1.5\") or a Go duration (\"500ms\") (env KUBELAMBDA_TIMEOUT)")
	memory := fs.String("memory-mb", env("KUBELAMBDA_MEMORY_MB", "128"),
		"function memory size in MB, 128..10240 (env KUBELAMBDA_MEMORY_MB)")
	name := fs.String("function-name", env("KUBELAMBDA_FUNCTION_NAME", "function"),
		"function name (env KUBELAMBDA_FUNCTION_NAME)")
	version := fs.String("function-version", env("KUBELAMBDA_FUNCTION_VERSION", "$LATEST"),
		"function version (env KUBELAMBDA_FUNCTION_VERSION)")
	arn := fs.String("function-arn", env("KUBELAMBDA_FUNCTION_ARN", ""),
		"invoked function ARN when the caller sends none; default arn:aws:lambda:REGION:000000000000:function:NAME "+
			"(env KUBELAMBDA_FUNCTION_ARN)")
	region := fs.String("region", env("KUBELAMBDA_REGION", "us-east-1"),
		"AWS_REGION given to the runtime (env KUBELAMBDA_REGION)")
	handler := fs.String("handler", env("KUBELAMBDA_HANDLER", ""),
		"handler, e.g. app.handler; _HANDLER of the runtime (env KUBELAMBDA_HANDLER)")
	taskRoot := fs.String("task-root", env("KUBELAMBDA_TASK_ROOT", "/var/task"),
		"folder with the function's code; LAMBDA_TASK_ROOT of the runtime (env KUBELAMBDA_TASK_ROOT)")
	runtimeDir := fs.String("runtime-dir", env("KUBELAMBDA_RUNTIME_DIR", "/opt/kubelambda/runtime"),
		"folder with the runtime client; LAMBDA_RUNTIME_DIR of the runtime (env KUBELAMBDA_RUNTIME_DIR)")
	runtimeName := fs.String("runtime-name", env("KUBELAMBDA_RUNTIME_NAME", "provided"),
		"runtime identifier for AWS_EXECUTION_ENV, e.g. python3.12 (env KUBELAMBDA_RUNTIME_NAME)")
	subst := fs.String("runtime-substitute", env("KUBELAMBDA_RUNTIME_SUBSTITUTE", ""),
		"set by a local dev cluster that runs the runtime on an interpreter of another version: what ran, "+
			"logged at start and added to every REPORT line (env KUBELAMBDA_RUNTIME_SUBSTITUTE)")
	maxReq := fs.String("max-request-bytes", env("KUBELAMBDA_MAX_REQUEST_BYTES", strconv.Itoa(defaultMaxPayload)),
		"largest invoke payload accepted (env KUBELAMBDA_MAX_REQUEST_BYTES)")
	maxResp := fs.String("max-response-bytes", env("KUBELAMBDA_MAX_RESPONSE_BYTES", strconv.Itoa(defaultMaxPayload)),
		"largest function response accepted (env KUBELAMBDA_MAX_RESPONSE_BYTES)")
	drain := fs.String("drain-timeout", env("KUBELAMBDA_DRAIN_TIMEOUT", ""),
		"how long SIGTERM waits for in-flight invocations; default the function timeout (env KUBELAMBDA_DRAIN_TIMEOUT)")
	generic := fs.String("generic", env("KUBELAMBDA_GENERIC", "off"),
		"warm-pool mode: off, prestart (start the runtime now, load code on POST /specialize) or deferred "+
			"(start the runtime on POST /specialize) (env KUBELAMBDA_GENERIC)")
	workDir := fs.String("workdir", env("KUBELAMBDA_WORKDIR", ""),
		"the workers' working directory; default the task root (env KUBELAMBDA_WORKDIR)")
	optDir := fs.String("opt-dir", env("KUBELAMBDA_OPT_DIR", "/opt"),
		"the layers' folder, Lambda's /opt: its bin, lib, python, nodejs... go on the runtime's search paths "+
			"(env KUBELAMBDA_OPT_DIR)")
	extDir := fs.String("extensions-dir", env("KUBELAMBDA_EXTENSIONS_DIR", ""),
		"folder of external Lambda extensions, each executable file started beside every runtime worker; "+
			"default OPT-DIR/extensions; \"none\" for none (env KUBELAMBDA_EXTENSIONS_DIR)")
	logFlags := addLogShipFlags(fs, env)
	logFormatFlag := fs.String("log-format", env("KUBELAMBDA_LOG_FORMAT", "Text"),
		"Lambda's LoggingConfig.LogFormat: Text, or JSON for JSON system records and AWS_LAMBDA_LOG_FORMAT=JSON "+
			"for the runtime (env KUBELAMBDA_LOG_FORMAT)")
	appLevel := fs.String("application-log-level", env("KUBELAMBDA_APPLICATION_LOG_LEVEL", ""),
		"JSON format only: the runtime's lines under this level (TRACE..FATAL) are dropped; AWS_LAMBDA_LOG_LEVEL "+
			"of the runtime; default INFO (env KUBELAMBDA_APPLICATION_LOG_LEVEL)")
	sysLevel := fs.String("system-log-level", env("KUBELAMBDA_SYSTEM_LOG_LEVEL", ""),
		"JSON format only: the agent's records under this level (DEBUG, INFO, WARN) are dropped; default INFO "+
			"(env KUBELAMBDA_SYSTEM_LOG_LEVEL)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: kubelambda-agent [flags] [-- runtime command...]\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}

	c := &Config{
		FunctionName: *name, FunctionVersion: *version, Region: *region, Handler: *handler,
		TaskRoot: *taskRoot, RuntimeDir: *runtimeDir, RuntimeName: *runtimeName, RuntimeSubst: *subst,
	}
	var errs []error
	bad := func(key, value, why string) {
		errs = append(errs, fmt.Errorf("invalid %s %q: %s", key, value, why))
	}
	if err := checkHostPort(*listen); err != nil {
		bad("listen (KUBELAMBDA_LISTEN)", *listen, err.Error())
	}
	c.Listen = *listen
	c.OptDir = *optDir
	c.WorkDir = *workDir
	if c.ExtensionsDir = *extDir; c.ExtensionsDir == "" && c.OptDir != "" {
		c.ExtensionsDir = filepath.Join(c.OptDir, "extensions")
	}
	if c.ExtensionsDir == "none" {
		c.ExtensionsDir = ""
	} else if st, err := os.Stat(c.ExtensionsDir); err == nil && !st.IsDir() {
		bad("extensions-dir (KUBELAMBDA_EXTENSIONS_DIR)", c.ExtensionsDir, "is not a folder")
	}
	switch strings.ToLower(*generic) {
	case "", "off", "false", "0":
		c.Generic = genericOff
	case "prestart", "true", "1":
		c.Generic = genericPrestart
	case "deferred":
		c.Generic = genericDeferred
	default:
		bad("generic (KUBELAMBDA_GENERIC)", *generic, "want off, prestart or deferred")
	}
	c.Workers = intIn(*workers, 1, 1000, "workers (KUBELAMBDA_WORKERS)", bad)
	c.MemoryMB = intIn(*memory, 128, 10240, "memory-mb (KUBELAMBDA_MEMORY_MB)", bad)
	c.MaxRequest = intIn(*maxReq, 1, 1<<30, "max-request-bytes (KUBELAMBDA_MAX_REQUEST_BYTES)", bad)
	c.MaxResponse = intIn(*maxResp, 1, 1<<30, "max-response-bytes (KUBELAMBDA_MAX_RESPONSE_BYTES)", bad)
	if d, err := parseSeconds(*timeout); err != nil {
		bad("timeout (KUBELAMBDA_TIMEOUT)", *timeout, err.Error())
	} else if d < 100*time.Millisecond || d > 900*time.Second {
		bad("timeout (KUBELAMBDA_TIMEOUT)", *timeout, "must be between 100ms and 900s")
	} else {
		c.Timeout = d
	}
	c.DrainTimeout = c.Timeout
	if *drain != "" {
		if d, err := parseSeconds(*drain); err != nil || d < 0 {
			bad("drain-timeout (KUBELAMBDA_DRAIN_TIMEOUT)", *drain, "want seconds or a Go duration")
		} else {
			c.DrainTimeout = d
		}
	}
	if host, port, err := splitHostPort(*runtimeAPI); err != nil {
		bad("runtime-api (KUBELAMBDA_RUNTIME_API)", *runtimeAPI, err.Error())
	} else if host == "" {
		bad("runtime-api (KUBELAMBDA_RUNTIME_API)", *runtimeAPI, "needs an IP, e.g. 127.0.0.1:9001")
	} else if c.Workers > 0 && port+c.Workers-1 > 65535 {
		bad("runtime-api (KUBELAMBDA_RUNTIME_API)", *runtimeAPI, fmt.Sprintf("port+workers-1 exceeds 65535 with %d workers", c.Workers))
	}
	c.RuntimeAPI = *runtimeAPI
	if c.FunctionName == "" {
		bad("function-name (KUBELAMBDA_FUNCTION_NAME)", c.FunctionName, "must not be empty")
	}
	c.FunctionARN = *arn
	if c.FunctionARN == "" {
		c.FunctionARN = fmt.Sprintf("arn:aws:lambda:%s:000000000000:function:%s", c.Region, c.FunctionName)
	}
	if st, err := os.Stat(c.TaskRoot); err != nil || !st.IsDir() {
		bad("task-root (KUBELAMBDA_TASK_ROOT)", c.TaskRoot, "is not a folder")
	}
	c.Log = logFlags.parse(bad)
	c.Format = parseLogFormat(*logFormatFlag, *appLevel, *sysLevel, bad)
	c.RuntimeCmd = fs.Args()
	if len(c.RuntimeCmd) == 0 {
		if v, ok := getenv("KUBELAMBDA_RUNTIME_CMD"); ok && strings.TrimSpace(v) != "" {
			cmd, err := parseCommand(v)
			if err != nil {
				bad("KUBELAMBDA_RUNTIME_CMD", v, err.Error())
			}
			c.RuntimeCmd = cmd
		}
	}
	if len(c.RuntimeCmd) == 0 {
		errs = append(errs, errors.New("no runtime command: give it after \"--\" or in KUBELAMBDA_RUNTIME_CMD"))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return c, nil
}

// parseSeconds accepts a number of seconds ("3", "0.5") or a Go duration ("500ms", "2m").
func parseSeconds(s string) (time.Duration, error) {
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		return time.Duration(f * float64(time.Second)), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, errors.New("want seconds (\"3\") or a Go duration (\"500ms\")")
	}
	return d, nil
}

func intIn(s string, lo, hi int, key string, bad func(key, value, why string)) int {
	n, err := strconv.Atoi(s)
	if err != nil || n < lo || n > hi {
		bad(key, s, fmt.Sprintf("want an integer in %d..%d", lo, hi))
		return 0
	}
	return n
}

func checkHostPort(s string) error {
	_, _, err := splitHostPort(s)
	return err
}

func splitHostPort(s string) (string, int, error) {
	host, portStr, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, errors.New("want host:port")
	}
	if host != "" && net.ParseIP(host) == nil && host != "localhost" {
		return "", 0, errors.New("host must be an IP address or localhost")
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 1 || port > 65535 {
		return "", 0, errors.New("port must be 1..65535")
	}
	return host, port, nil
}

// parseCommand reads a JSON array of strings, or else splits on whitespace.
func parseCommand(s string) ([]string, error) {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "[") {
		var argv []string
		if err := json.Unmarshal([]byte(s), &argv); err != nil {
			return nil, errors.New("not a JSON array of strings")
		}
		return argv, nil
	}
	return strings.Fields(s), nil
}

// workerAddr is the Runtime API address of worker i.
func (c *Config) workerAddr(i int) string {
	host, port, _ := splitHostPort(c.RuntimeAPI)
	return net.JoinHostPort(host, strconv.Itoa(port+i))
}
