package main

// Generic mode: the agent of a warm-pool pod (docs/warm-pools.md). It starts without a function and waits
// for one POST /specialize from the gateway, which names the function (handler, environment, memory, timeout)
// and gives its code: inline files in the request, or an archive URL that the agent downloads and checks
// against its SHA-256. The pod then serves that function, and only that one, until it is deleted: a second
// POST /specialize is refused (409), whether it names the same function or another.
//
// Two flavours:
//   - prestart: the runtime worker is started at once, with KUBELAMBDA_AWAIT_SPECIALIZATION=1. A runtime
//     client that knows the convention (ours: Python, Node.js) asks GET /2018-06-01/kubelambda/specialization
//     on its Runtime API before it loads anything; the call blocks until the function is known and answers
//     the environment to adopt ({"env": {...}, "unset": [...]}). The interpreter start is then off the
//     cold path; what remains is loading the handler.
//   - deferred: nothing starts until POST /specialize; then the workers start as in a function pod. Works
//     with any runtime client (AWS's own included) and saves only the pod start.

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

type genericMode int

const (
	genericOff genericMode = iota
	genericPrestart
	genericDeferred
)

func (g genericMode) describe() string {
	switch g {
	case genericPrestart:
		return ", generic (pre-started, waiting for POST /specialize)"
	case genericDeferred:
		return ", generic (waiting for POST /specialize)"
	}
	return ""
}

const (
	specializationPath     = "/2018-06-01/kubelambda/specialization"
	awaitSpecializationEnv = "KUBELAMBDA_AWAIT_SPECIALIZATION"
	maxSpecializeRequest   = 8 << 20   // inline code is at most 1 MiB (a ConfigMap); room for the envelope
	maxArchiveBytes        = 50 << 20  // Lambda's zipped deployment package limit
	maxUnzippedBytes       = 250 << 20 // Lambda's unzipped limit
	archiveFetchTimeout    = 60 * time.Second
	specializeInitWait     = 60 * time.Second // how long POST /specialize waits for the handler to load
)

type archiveRef struct {
	URL    string `json:"url"`
	Sha256 string `json:"sha256"`
}

// specializeRequest is the body of POST /specialize.
type specializeRequest struct {
	FunctionName    string            `json:"functionName"`
	Namespace       string            `json:"namespace,omitempty"`  // the function's, for shipped log records
	LogNatsURL      string            `json:"logNatsUrl,omitempty"` // the log store, as the namespace's log user
	FunctionARN     string            `json:"functionArn"`
	FunctionVersion string            `json:"functionVersion,omitempty"` // a published version's number; absent = $LATEST
	Handler         string            `json:"handler"`
	MemoryMB        int               `json:"memoryMB"`
	TimeoutSeconds  float64           `json:"timeoutSeconds"`
	Environment     map[string]string `json:"environment"`
	CodeSha256      string            `json:"codeSha256"`
	Runtime         string            `json:"runtime,omitempty"`    // the runtime the sender means (identity.go)
	PodUID          string            `json:"podUid,omitempty"`     // the pod the sender means (identity.go)
	AgentToken      string            `json:"agentToken,omitempty"` // the function's token, from now on (auth.go)
	Inline          map[string]string `json:"inline,omitempty"`
	Archive         *archiveRef       `json:"archive,omitempty"`
	Logging         *loggingConfig    `json:"logging,omitempty"` // the Function's LoggingConfig; absent = Text
}

// loggingConfig is a Function's spec.logging, as the gateway sends it.
type loggingConfig struct {
	LogFormat           string `json:"logFormat"`
	ApplicationLogLevel string `json:"applicationLogLevel,omitempty"`
	SystemLogLevel      string `json:"systemLogLevel,omitempty"`
}

// specializeStatus is the answer of POST and GET /specialize.
type specializeStatus struct {
	State        string  `json:"state"` // generic, specializing, ready, init_error, failed
	FunctionName string  `json:"functionName,omitempty"`
	CodeSha256   string  `json:"codeSha256,omitempty"`
	FetchSeconds float64 `json:"fetchSeconds,omitempty"`
	InitSeconds  float64 `json:"initSeconds,omitempty"`
	Error        string  `json:"error,omitempty"`
}

type specializer struct {
	cfg    *Config
	pool   *pool
	log    *logger
	client *http.Client
	auth   *agentAuth

	mu     sync.Mutex
	status specializeStatus
}

func newSpecializer(cfg *Config, p *pool, log *logger) *specializer {
	s := &specializer{cfg: cfg, pool: p, log: log, client: &http.Client{Timeout: archiveFetchTimeout},
		auth: newAgentAuth(os.LookupEnv)}
	s.status.State = "generic"
	if cfg.Generic == genericOff {
		s.status = specializeStatus{State: "ready", FunctionName: cfg.FunctionName}
	} else if taskRootUsed(cfg.TaskRoot) {
		s.status = specializeStatus{State: "consumed", Error: "the task root holds code: this pod was specialised before its agent restarted"}
		log.line("kubelambda-agent: " + s.status.Error + "; it is never specialised again")
	}
	return s
}

func (s *specializer) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet:
		s.mu.Lock()
		st := s.status
		s.mu.Unlock()
		writeJSON(rw, http.StatusOK, st)
	case http.MethodPost:
		s.specialize(rw, r)
	default:
		rw.Header().Set("Allow", "GET, POST")
		apiError(rw, http.StatusMethodNotAllowed, "InvalidRequestContentException", "use GET or POST")
	}
}

func (s *specializer) specialize(rw http.ResponseWriter, r *http.Request) {
	started := time.Now()
	body, tooLarge, err := readBody(r, maxSpecializeRequest)
	if err != nil || tooLarge {
		apiError(rw, http.StatusBadRequest, "InvalidRequestContentException", "the request is unreadable or over 8 MiB")
		return
	}
	var req specializeRequest
	if err := json.Unmarshal(body, &req); err != nil {
		apiError(rw, http.StatusBadRequest, "InvalidRequestContentException", "not a specialisation request: "+err.Error())
		return
	}
	if err := req.validate(); err != nil {
		apiError(rw, http.StatusBadRequest, "InvalidRequestContentException", err.Error())
		return
	}
	if why := s.misdirected(&req); why != "" {
		refuseMisdirected(rw, why)
		return
	}
	// One function per pod, ever: the first accepted request consumes the pod, even if it fails later.
	s.mu.Lock()
	if s.status.State != "generic" {
		st := s.status
		s.mu.Unlock()
		writeJSON(rw, http.StatusConflict, st)
		return
	}
	s.status = specializeStatus{State: "specializing", FunctionName: req.FunctionName, CodeSha256: req.CodeSha256}
	s.mu.Unlock()
	s.auth.replace(req.AgentToken) // the pool's token opens nothing here any more

	if err := s.materialize(r.Context(), &req); err != nil {
		s.fail(rw, &req, err)
		return
	}
	fetched := time.Since(started)
	s.configure(&req)
	s.log.line(fmt.Sprintf("kubelambda-agent: specialised for function %s (code sha256 %s, handler %s) in %v",
		req.FunctionName, req.CodeSha256, req.Handler, fetched.Round(time.Millisecond)))

	// Wait until the handler is loaded (or failed to), so that the caller's invoke finds a ready worker.
	state := "ready"
	t := time.NewTimer(specializeInitWait)
	select {
	case <-s.pool.initDone:
		s.pool.mu.Lock()
		if len(s.pool.failed) > 0 {
			state = "init_error"
		}
		s.pool.mu.Unlock()
	case <-t.C:
		state = "specializing" // still loading; invokes wait for it as in any pod
	case <-r.Context().Done():
	}
	t.Stop()
	s.mu.Lock()
	s.status.State = state
	s.status.FetchSeconds = fetched.Seconds()
	s.status.InitSeconds = time.Since(started).Seconds() - fetched.Seconds()
	st := s.status
	s.mu.Unlock()
	writeJSON(rw, http.StatusOK, st)
}

func (s *specializer) fail(rw http.ResponseWriter, req *specializeRequest, err error) {
	s.mu.Lock()
	s.status.State = "failed"
	s.status.Error = err.Error()
	st := s.status
	s.mu.Unlock()
	s.log.line(fmt.Sprintf("kubelambda-agent: could not specialise for function %s: %v", req.FunctionName, err))
	writeJSON(rw, http.StatusBadGateway, st)
}

func (req *specializeRequest) validate() error {
	switch {
	case req.FunctionName == "":
		return errors.New("functionName is required")
	case req.Handler == "":
		return errors.New("handler is required")
	case req.CodeSha256 == "":
		return errors.New("codeSha256 is required")
	case (req.Inline == nil) == (req.Archive == nil):
		return errors.New("give exactly one of inline and archive")
	case req.Archive != nil && (req.Archive.URL == "" || req.Archive.Sha256 == ""):
		return errors.New("archive needs url and sha256")
	case req.Archive != nil && !strings.EqualFold(req.Archive.Sha256, req.CodeSha256):
		return errors.New("archive.sha256 and codeSha256 differ")
	case req.MemoryMB != 0 && (req.MemoryMB < 128 || req.MemoryMB > 10240):
		return errors.New("memoryMB must be 128..10240")
	case req.TimeoutSeconds != 0 && (req.TimeoutSeconds < 0.1 || req.TimeoutSeconds > 900):
		return errors.New("timeoutSeconds must be 0.1..900")
	}
	if req.LogNatsURL != "" {
		if u, err := url.Parse(req.LogNatsURL); err != nil || u.Scheme != "nats" || u.Host == "" {
			return fmt.Errorf("logNatsUrl %q: want nats://user:password@host:port", redactURL(req.LogNatsURL))
		}
	}
	if l := req.Logging; l != nil {
		var bad []string
		parseLogFormat(l.LogFormat, l.ApplicationLogLevel, l.SystemLogLevel, func(key, value, why string) {
			bad = append(bad, fmt.Sprintf("logging: %s %q: %s", key, value, why))
		})
		if len(bad) > 0 {
			return errors.New(strings.Join(bad, "; "))
		}
	}
	return nil
}

// materialize puts the function's code into the task root.
func (s *specializer) materialize(ctx context.Context, req *specializeRequest) error {
	// Whatever the folder holds goes first: a container restarted in a pod that was specialised before (the
	// emptyDir outlives the container) must not leave one function's files to another.
	if err := emptyDir(s.cfg.TaskRoot); err != nil {
		return fmt.Errorf("emptying the task root: %w", err)
	}
	if req.Inline != nil {
		for _, name := range sortedKeys(req.Inline) {
			clean, err := checkedName(name)
			if err != nil {
				return err
			}
			if err := writeFile(s.cfg.TaskRoot, clean, []byte(req.Inline[name]), 0o644); err != nil {
				return err
			}
		}
		return nil
	}
	data, err := s.fetch(ctx, req.Archive.URL)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(data)
	if got := hex.EncodeToString(sum[:]); !strings.EqualFold(got, req.Archive.Sha256) {
		return fmt.Errorf("the archive's sha256 is %s, not %s: refusing to run it", got, req.Archive.Sha256)
	}
	return unzipInto(data, s.cfg.TaskRoot)
}

func (s *specializer) fetch(ctx context.Context, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("bad archive url: %w", err)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetching the archive: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetching the archive: %s answered %d", url, resp.StatusCode)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxArchiveBytes+1))
	if err != nil {
		return nil, fmt.Errorf("fetching the archive: %w", err)
	}
	if len(data) > maxArchiveBytes {
		return nil, fmt.Errorf("the archive is over the %d-byte limit for a zipped function", maxArchiveBytes)
	}
	return data, nil
}

// configure makes the configuration the function's, then lets the workers go.
func (s *specializer) configure(req *specializeRequest) {
	c := s.cfg
	p := s.pool
	// Nothing reads these before p.live is set below (invokes are refused, workers are parked or not started).
	c.FunctionName = req.FunctionName
	if req.Namespace != "" {
		c.Log.Namespace = req.Namespace
	}
	if req.LogNatsURL != "" && s.log.ship != nil {
		_ = s.log.ship.setURL(req.LogNatsURL) // validate refused a bad one
	}
	s.log.ship.setFunction(c.Log.Namespace, c.FunctionName)
	c.FunctionARN = req.FunctionARN
	if req.FunctionVersion != "" {
		c.FunctionVersion = req.FunctionVersion
	}
	if c.FunctionARN == "" {
		c.FunctionARN = fmt.Sprintf("arn:aws:lambda:%s:000000000000:function:%s", c.Region, c.FunctionName)
	}
	c.Handler = req.Handler
	if req.Logging != nil {
		c.Format = parseLogFormat(req.Logging.LogFormat, req.Logging.ApplicationLogLevel, req.Logging.SystemLogLevel,
			func(string, string, string) {}) // validate refused a bad one
		s.log.format.Store(&c.Format)
	}
	if req.MemoryMB != 0 {
		c.MemoryMB = req.MemoryMB
		p.metrics.memoryMB.Store(int64(c.MemoryMB))
	}
	if req.TimeoutSeconds != 0 {
		c.Timeout = time.Duration(req.TimeoutSeconds * float64(time.Second))
		c.DrainTimeout = c.Timeout
	}
	env := withLayerPaths(c, functionEnv(c, os.Environ(), req.Environment))
	overlay := map[string]string{}
	for _, kv := range env {
		k, v, _ := cut(kv, '=')
		overlay[k] = v
	}
	body, _ := json.Marshal(struct {
		Env   map[string]string `json:"env"`
		Unset []string          `json:"unset"`
	}{overlay, []string{awaitSpecializationEnv}})
	p.mu.Lock()
	p.env = env
	p.overlay = body
	p.mu.Unlock()
	p.live.Store(true)
	close(p.released)
}

// functionEnv is the environment of the function's runtime processes: the Lambda variables over the pod's
// environment (workerEnv), then the function's own variables, which cannot replace the reserved ones.
func functionEnv(c *Config, base []string, own map[string]string) []string {
	env := workerEnv(c, base)
	index := map[string]int{}
	for i, kv := range env {
		k, _, _ := cut(kv, '=')
		index[k] = i
	}
	reserved := map[string]bool{"AWS_LAMBDA_RUNTIME_API": true}
	for _, kv := range workerEnv(c, nil) {
		k, _, _ := cut(kv, '=')
		reserved[k] = true
	}
	keys := make([]string, 0, len(own))
	for k := range own {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if reserved[k] || hasPrefix(k, "KUBELAMBDA_") || k == "" || strings.ContainsAny(k, "=\x00") {
			continue
		}
		if i, ok := index[k]; ok {
			env[i] = k + "=" + own[k]
		} else {
			env = append(env, k+"="+own[k])
		}
	}
	return env
}

// awaitSpecialization answers a pre-started runtime's GET /2018-06-01/kubelambda/specialization once the pod
// has its function: the environment to adopt. It blocks until then.
func (a *runtimeAPI) awaitSpecialization(rw http.ResponseWriter, r *http.Request, pr *proc) {
	if r.Method != http.MethodGet {
		runtimeErr(rw, http.StatusMethodNotAllowed, "MethodNotAllowed", r.Method+" is not allowed on "+r.URL.Path)
		return
	}
	p := a.pool
	p.parked.Add(1)
	select {
	case <-p.released:
		p.parked.Add(-1)
	case <-pr.exited:
		p.parked.Add(-1)
		return
	case <-r.Context().Done():
		p.parked.Add(-1)
		return
	}
	p.mu.Lock()
	pr.initFrom = time.Now()
	body := p.overlay
	p.mu.Unlock()
	if body == nil { // not a generic pod: nothing to adopt
		body = []byte(`{"env":{},"unset":[]}`)
	}
	rw.Header()["Content-Type"] = []string{"application/json"}
	_, _ = rw.Write(body)
}

// checkedName refuses names that would leave the task root.
func checkedName(name string) (string, error) {
	if name == "" || strings.ContainsAny(name, "\\\x00") {
		return "", fmt.Errorf("refusing file name %q: empty, NUL or backslash", name)
	}
	if strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("refusing file name %q: absolute path", name)
	}
	clean := path.Clean(name)
	if clean == ".." || strings.HasPrefix(clean, "../") {
		return "", fmt.Errorf("refusing file name %q: '..' would leave the task root", name)
	}
	return clean, nil
}

func emptyDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

func writeFile(root, name string, data []byte, mode os.FileMode) error {
	target := filepath.Join(root, filepath.FromSlash(name))
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return err
	}
	return os.WriteFile(target, data, mode)
}

// unzipInto unpacks a zip into root with the rules of `kubelambda fetch-code`: no absolute names or '..',
// at most 250 MiB unpacked, files 0644 or 0755 (from the zip's Unix mode).
func unzipInto(data []byte, root string) error {
	zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		return fmt.Errorf("the archive is not a zip: %w", err)
	}
	var total int64
	for _, f := range zr.File {
		name, err := checkedName(f.Name)
		if err != nil {
			return err
		}
		if strings.HasSuffix(f.Name, "/") || f.FileInfo().IsDir() {
			if err := os.MkdirAll(filepath.Join(root, filepath.FromSlash(name)), 0o755); err != nil {
				return err
			}
			continue
		}
		rc, err := f.Open()
		if err != nil {
			return fmt.Errorf("reading %s from the zip: %w", f.Name, err)
		}
		content, err := io.ReadAll(io.LimitReader(rc, maxUnzippedBytes-total+1))
		rc.Close()
		if err != nil {
			return fmt.Errorf("reading %s from the zip: %w", f.Name, err)
		}
		total += int64(len(content))
		if total > maxUnzippedBytes {
			return fmt.Errorf("the archive unpacks to over %d bytes", maxUnzippedBytes)
		}
		mode := os.FileMode(0o644)
		if f.Mode()&0o111 != 0 {
			mode = 0o755
		}
		if err := writeFile(root, name, content, mode); err != nil {
			return err
		}
	}
	return nil
}

func writeJSON(rw http.ResponseWriter, status int, v any) {
	b, _ := json.Marshal(v)
	rw.Header()["Content-Type"] = []string{"application/json"}
	rw.WriteHeader(status)
	_, _ = rw.Write(b)
}
