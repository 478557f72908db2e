package main

// The Lambda Extensions API (2020-01-01), served on each worker's Runtime API address beside the Runtime API.
//
// Each worker is one execution environment, as on Lambda: its runtime process plus the extensions that run
// beside it. An environment's life, with Lambda's semantics (docs/extensions.md):
//
//   - Extension init: every executable file in the extensions folder (/opt/extensions) is started, in name
//     order, with AWS_LAMBDA_RUNTIME_API set, and must POST /extension/register with its file name. The
//     runtime starts only once every one of them has registered (or init fails: a crash is Extension.Crash,
//     init/error is Extension.InitError, no registration in time is Sandbox.Timedout).
//   - Runtime init: the runtime starts; internal extensions (threads of the runtime process) may register
//     now, for INVOKE only. Init ends when the runtime and every extension have called next; Init Duration
//     covers all of it.
//   - Invoke: the event goes to the runtime and an INVOKE event to every extension registered for INVOKE.
//     The caller gets the response as soon as the runtime posts it, but the environment takes its next
//     invocation only after the runtime and every extension have called next again, and the REPORT line
//     (Duration, Billed Duration) is written then, counting the extensions' time after the response. The
//     function timeout bounds the whole phase: an extension still busy at the deadline resets the
//     environment (Status: timeout).
//   - Shutdown and reset: when the pod stops (spindown), after a timeout (timeout), or after a runtime or
//     extension failure (failure), the runtime is stopped and every external extension registered for
//     SHUTDOWN gets a SHUTDOWN event with a deadline 2 s away; whatever still runs then is killed. After a
//     reset the next invocation starts a fresh environment (extensions included).

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	extensionsPrefix = "/2020-01-01/extension/"
	maxExtensions    = 10 // Lambda's limit, enforced at registration
)

// extShutdownLimit is the time external extensions get to finish after a SHUTDOWN event (Lambda's 2 s); a
// variable for the tests.
var extShutdownLimit = 2 * time.Second

// extRegisterLimit bounds the extension init phase (Lambda's init phase limit); a variable for the tests.
var extRegisterLimit = 10 * time.Second

type extPhase int

const (
	extPhaseLaunch      extPhase = iota // external extensions started, registering
	extPhaseRuntimeInit                 // the runtime has been started; internal extensions may register
	extPhaseReady                       // init is over
	extPhaseShutdown                    // SHUTDOWN sent or being sent; nothing new is accepted
)

// initFailure is an environment init failure found before the runtime process started.
type initFailure struct{ res result }

func (f *initFailure) Error() string { return f.res.errType }

// extension is one registered extension.
type extension struct {
	set        *extSet
	id, name   string
	external   bool
	onInvoke   bool
	onShutdown bool
	events     chan extEvent // INVOKE and SHUTDOWN events not yet fetched
	idle       bool          // has called next since its last event (or since registering); pool.mu
	shutSent   bool          // its SHUTDOWN event was delivered; pool.mu
	shutClosed bool          // shutDone is closed; pool.mu
	shutDone   chan struct{} // closed when it calls next after its SHUTDOWN event was delivered
	errored    bool          // it reported init/error or exit/error: no further call succeeds; pool.mu
	proc       *extProc      // the launched file, for an external extension
}

type extEvent struct {
	body     []byte
	shutdown bool
}

// extProc is one launched external extension process.
type extProc struct {
	name   string
	pid    int
	exited chan struct{}
	err    error // the process's exit, once exited is closed
}

// extSet is the extensions of one environment (one worker's runtime process and what runs beside it).
type extSet struct {
	p           *pool
	w           *worker
	pr          *proc // the runtime, once started; pool.mu
	phase       extPhase
	byID        map[string]*extension
	byName      map[string]*extension
	list        []*extension // registration order
	procs       []*extProc
	launched    time.Time // when extension init began
	tel         *telemetry
	runtimeInit bool // the runtime has called next once; pool.mu
	waiting     int  // launched external extensions that have not registered yet; pool.mu

	registered chan struct{} // closed when every launched extension has registered
	failed     chan struct{} // closed at the first failure
	fail       *result       // the first failure; pool.mu
	killed     chan struct{} // closed when the extension processes have been killed

	runtimeWaiting bool           // the runtime called next and waits for the extensions; pool.mu
	awaitReport    bool           // the runtime answered; its REPORT is being handed over; pool.mu
	pending        *pendingReport // REPORT waiting for the extensions to finish; pool.mu
	resetReason    string         // why the environment is being reset ("timeout", "failure"); pool.mu
}

type pendingReport struct {
	inv   *invocation
	ri    reportInfo
	timer *time.Timer
}

func (p *pool) newExtSet(w *worker) *extSet {
	return &extSet{
		p: p, w: w, byID: map[string]*extension{}, byName: map[string]*extension{}, tel: newTelemetry(),
		registered: make(chan struct{}), failed: make(chan struct{}), killed: make(chan struct{}),
	}
}

// extensionFiles lists the executable files of dir in name order (Lambda starts them in that order).
func extensionFiles(dir string) ([]string, error) {
	if dir == "" {
		return nil, nil
	}
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var files []string
	for _, e := range entries {
		path := filepath.Join(dir, e.Name())
		st, err := os.Stat(path) // follows symlinks
		if err != nil || !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
			continue
		}
		files = append(files, path)
	}
	return files, nil
}

// extensionEnv is an extension's environment: the function's, less the variables that only the runtime
// process sees on Lambda.
func extensionEnv(env []string, addr string) []string {
	runtimeOnly := map[string]bool{
		"AWS_EXECUTION_ENV": true, "AWS_LAMBDA_LOG_GROUP_NAME": true, "AWS_LAMBDA_LOG_STREAM_NAME": true,
		"AWS_XRAY_CONTEXT_MISSING": true, "AWS_XRAY_DAEMON_ADDRESS": true, "LAMBDA_RUNTIME_DIR": true,
		"LAMBDA_TASK_ROOT": true, "_AWS_XRAY_DAEMON_ADDRESS": true, "_AWS_XRAY_DAEMON_PORT": true, "_HANDLER": true,
		awaitSpecializationEnv: true,
	}
	out := make([]string, 0, len(env)+1)
	for _, kv := range env {
		if key, _, _ := cut(kv, '='); !runtimeOnly[key] {
			out = append(out, kv)
		}
	}
	return append(out, "AWS_LAMBDA_RUNTIME_API="+addr)
}

// launch starts the external extensions and waits until each has registered. On failure it has stopped
// them again and returns an *initFailure.
func (es *extSet) launch(env []string) error {
	p := es.p
	es.tel.initStart(initType)
	files, err := extensionFiles(p.cfg.ExtensionsDir)
	if err == nil && len(files) > maxExtensions {
		err = fmt.Errorf("%d extensions in %s; at most %d are allowed", len(files), p.cfg.ExtensionsDir, maxExtensions)
	}
	if err != nil {
		close(es.killed)
		return &initFailure{result{outcome: outInitError, errType: "Extension.LaunchError",
			body: errorJSON("Extension.LaunchError", "RequestId: - Error: "+err.Error())}}
	}
	p.mu.Lock()
	es.waiting = len(files)
	if es.waiting == 0 {
		close(es.registered)
	}
	p.mu.Unlock()
	xenv := extensionEnv(env, es.w.addr)
	for _, path := range files {
		if err := es.start(path, xenv); err != nil {
			es.failWith("Extension.LaunchError", fmt.Sprintf("extension %s could not start: %v", filepath.Base(path), err))
			break
		}
	}
	t := time.NewTimer(extRegisterLimit)
	defer t.Stop()
	select {
	case <-es.registered:
	case <-es.failed:
	case <-t.C:
		es.failWith("Sandbox.Timedout", fmt.Sprintf("extension init timed out: not every extension in %s registered within %v",
			p.cfg.ExtensionsDir, extRegisterLimit))
	}
	p.mu.Lock()
	f := es.fail
	if f == nil {
		es.phase = extPhaseRuntimeInit
	}
	p.mu.Unlock()
	if f != nil {
		es.shutdown("failure")
		return &initFailure{*f}
	}
	return nil
}

func (es *extSet) start(path string, env []string) error {
	p := es.p
	cmd := exec.Command(path)
	cmd.Env = env
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	outR, outW, err := os.Pipe()
	if err != nil {
		return err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return err
	}
	cmd.Stdout, cmd.Stderr = outW, errW
	err = cmd.Start()
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		return err
	}
	xp := &extProc{name: filepath.Base(path), pid: cmd.Process.Pid, exited: make(chan struct{})}
	p.mu.Lock()
	es.procs = append(es.procs, xp)
	p.mu.Unlock()
	go p.log.pipe(outR, &lineTee{w: p.log.stdout, tel: es.tel, kind: "extension"}, nil, nil)
	go p.log.pipe(errR, &lineTee{w: p.log.stderr, tel: es.tel, kind: "extension"}, nil, nil)
	go func() {
		xp.err = cmd.Wait()
		_ = syscall.Kill(-xp.pid, syscall.SIGKILL) // its children go with it
		close(xp.exited)
		es.procExited(xp)
	}()
	return nil
}

// procExited: an extension process ended. Outside shutdown that fails the environment.
func (es *extSet) procExited(xp *extProc) {
	p := es.p
	p.mu.Lock()
	shutting := es.phase == extPhaseShutdown
	p.mu.Unlock()
	if shutting {
		return
	}
	why := "exited without an error"
	if xp.err != nil {
		why = xp.err.Error()
	}
	es.failWith("Extension.Crash", fmt.Sprintf("extension %s crashed: %s", xp.name, why))
}

// failWith records the environment's first failure and ends the runtime: during init the failure answers
// the invocations waiting for it, later the environment is reset.
func (es *extSet) failWith(errType, msg string) {
	p := es.p
	res := result{outcome: outInitError, errType: errType, body: errorJSON(errType, "RequestId: - Error: "+msg)}
	p.mu.Lock()
	if es.fail != nil || es.phase == extPhaseShutdown {
		p.mu.Unlock()
		return
	}
	es.fail = &res
	close(es.failed)
	pr := es.pr
	if pr != nil && !pr.initDone {
		pr.initErrMu.Lock()
		if pr.initErr == nil {
			pr.initErr, pr.initErrType = res.body, res.errType
		}
		pr.initErrMu.Unlock()
	}
	if es.resetReason == "" {
		es.resetReason = "failure"
	}
	p.mu.Unlock()
	p.log.line("kubelambda-agent: worker " + strconv.Itoa(es.w.index) + ": " + errType + ": " + msg)
	if pr != nil {
		pr.kill()
	}
}

// idleLocked: every extension has called next since its last event.
func (es *extSet) idleLocked() bool {
	for _, x := range es.list {
		if !x.idle {
			return false
		}
	}
	return true
}

func (es *extSet) hasInvokeLocked() bool {
	for _, x := range es.list {
		if x.onInvoke {
			return true
		}
	}
	return false
}

// invokeLocked sends the INVOKE event of inv to every extension registered for it.
func (es *extSet) invokeLocked(inv *invocation) {
	var body []byte
	for _, x := range es.list {
		if !x.onInvoke {
			continue
		}
		if body == nil {
			body, _ = json.Marshal(map[string]any{
				"eventType": "INVOKE", "deadlineMs": inv.deadline().UnixMilli(), "requestId": inv.id,
				"invokedFunctionArn": inv.arn,
				"tracing":            map[string]string{"type": "X-Amzn-Trace-Id", "value": inv.traceID},
			})
		}
		x.idle = false
		x.events <- extEvent{body: body}
	}
}

// shutdown sends SHUTDOWN to the external extensions registered for it, waits until they have called next
// again or exited (at most extShutdownLimit), then kills every extension process. The runtime is already
// gone. Safe to call more than once.
func (es *extSet) shutdown(reason string) {
	p := es.p
	p.mu.Lock()
	if es.phase == extPhaseShutdown {
		p.mu.Unlock()
		<-es.killed
		return
	}
	es.phase = extPhaseShutdown
	deadline := time.Now().Add(extShutdownLimit)
	body, _ := json.Marshal(map[string]any{"eventType": "SHUTDOWN", "shutdownReason": reason, "deadlineMs": deadline.UnixMilli()})
	var told []*extension
	for _, x := range es.list {
		if x.external && x.onShutdown {
			x.idle = false
			select {
			case x.events <- extEvent{body: body, shutdown: true}:
			default: // an unfetched INVOKE fills the queue: it gets no SHUTDOWN, and the kill
			}
			told = append(told, x)
		}
	}
	procs := append([]*extProc(nil), es.procs...)
	if es.pending != nil && es.pending.timer != nil {
		es.pending.timer.Stop()
	}
	p.mu.Unlock()
	// Telemetry already buffered goes out before the extensions hear of the shutdown.
	es.tel.closeAll(time.Now().Add(extShutdownLimit / 2))
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
wait:
	for _, x := range told {
		select {
		case <-x.shutDone:
		case <-x.proc.exited:
		case <-t.C:
			break wait
		}
	}
	for _, xp := range procs {
		_ = syscall.Kill(-xp.pid, syscall.SIGKILL)
	}
	for _, xp := range procs {
		<-xp.exited
	}
	close(es.killed)
}

// serveExtensionAPI answers the Extensions API on worker w's address.
func (p *pool) serveExtensionAPI(rw http.ResponseWriter, r *http.Request, w *worker) {
	es := w.ext.Load()
	if es == nil {
		runtimeErr(rw, http.StatusInternalServerError, "Extension.Unknown", "no execution environment")
		return
	}
	if r.URL.Path == telemetryPath || r.URL.Path == telemetryPath+"/" {
		es.serveTelemetry(rw, r) // telemetry.go
		return
	}
	verb := strings.TrimPrefix(r.URL.Path, extensionsPrefix)
	want := map[string]string{"register": http.MethodPost, "event/next": http.MethodGet,
		"init/error": http.MethodPost, "exit/error": http.MethodPost}[verb]
	if want == "" {
		runtimeErr(rw, http.StatusNotFound, "UnknownPath", "no such Extensions API path: "+r.URL.Path)
		return
	}
	if r.Method != want {
		runtimeErr(rw, http.StatusMethodNotAllowed, "MethodNotAllowed", r.Method+" is not allowed on "+r.URL.Path)
		return
	}
	if verb == "register" {
		es.register(rw, r)
		return
	}
	id := r.Header.Get("Lambda-Extension-Identifier")
	p.mu.Lock()
	x := es.byID[id]
	p.mu.Unlock()
	if id == "" {
		runtimeErr(rw, http.StatusForbidden, "Extension.MissingExtensionIdentifier", "the Lambda-Extension-Identifier header is required")
		return
	}
	if x == nil {
		runtimeErr(rw, http.StatusForbidden, "Extension.UnknownExtensionIdentifier", "no registered extension has the identifier "+id)
		return
	}
	switch verb {
	case "event/next":
		es.next(rw, r, x)
	default:
		es.reportError(rw, r, x, verb)
	}
}

func (es *extSet) register(rw http.ResponseWriter, r *http.Request) {
	p := es.p
	name := r.Header.Get("Lambda-Extension-Name")
	if name == "" {
		runtimeErr(rw, http.StatusBadRequest, "InvalidRequest", "the Lambda-Extension-Name header is required (the extension's file name)")
		return
	}
	var req struct {
		Events []string `json:"events"`
	}
	body, tooLarge, err := readBody(r, 64<<10)
	if err != nil || tooLarge || (len(strings.TrimSpace(string(body))) > 0 && json.Unmarshal(body, &req) != nil) {
		runtimeErr(rw, http.StatusBadRequest, "InvalidRequest", `the body must be {"events": ["INVOKE", "SHUTDOWN"]}`)
		return
	}
	x := &extension{set: es, name: name, id: newRequestID(), events: make(chan extEvent, 2), shutDone: make(chan struct{})}
	for _, ev := range req.Events {
		switch ev {
		case "INVOKE":
			x.onInvoke = true
		case "SHUTDOWN":
			x.onShutdown = true
		default:
			runtimeErr(rw, http.StatusBadRequest, "InvalidEventType", fmt.Sprintf("event %q: want INVOKE or SHUTDOWN", ev))
			return
		}
	}
	p.mu.Lock()
	if es.byName[name] != nil {
		p.mu.Unlock()
		runtimeErr(rw, http.StatusForbidden, "Extension.AlreadyRegistered", "an extension named "+name+" has already registered")
		return
	}
	if len(es.list) >= maxExtensions {
		p.mu.Unlock()
		runtimeErr(rw, http.StatusBadRequest, "TooManyExtensions", fmt.Sprintf("at most %d extensions can register", maxExtensions))
		return
	}
	switch es.phase {
	case extPhaseLaunch: // an external extension: it names its file
		for _, xp := range es.procs {
			if xp.name == name {
				x.external, x.proc = true, xp
			}
		}
		if !x.external {
			p.mu.Unlock()
			runtimeErr(rw, http.StatusForbidden, "Extension.UnknownExtension",
				"no extension file is named "+name+": an external extension registers with its file name")
			return
		}
	case extPhaseRuntimeInit: // an internal extension, a thread of the runtime process
		if es.pr != nil && es.pr.initDone {
			p.mu.Unlock()
			runtimeErr(rw, http.StatusForbidden, "InvalidStateTransition", "extensions register during init only")
			return
		}
		if x.onShutdown {
			p.mu.Unlock()
			runtimeErr(rw, http.StatusForbidden, "ShutdownEventNotSupportedForInternalExtension",
				"an internal extension (one registered by the runtime process) cannot register for SHUTDOWN")
			return
		}
	default:
		p.mu.Unlock()
		runtimeErr(rw, http.StatusForbidden, "InvalidStateTransition", "extensions register during init only")
		return
	}
	es.byID[x.id], es.byName[name] = x, x
	es.list = append(es.list, x)
	if x.external {
		es.waiting--
		if es.waiting == 0 {
			close(es.registered)
		}
	}
	p.mu.Unlock()
	var events []string
	if x.onInvoke {
		events = append(events, "INVOKE")
	}
	if x.onShutdown {
		events = append(events, "SHUTDOWN")
	}
	es.tel.emitPlatform("platform.extension", map[string]any{"name": name, "state": "Ready", "events": events})
	resp := map[string]string{"functionName": p.cfg.FunctionName, "functionVersion": p.cfg.FunctionVersion, "handler": p.cfg.Handler}
	if strings.Contains(r.Header.Get("Lambda-Extension-Accept-Feature"), "accountId") {
		resp["accountId"] = accountID(p.cfg.FunctionARN)
	}
	rw.Header()["Lambda-Extension-Identifier"] = []string{x.id}
	writeJSON(rw, http.StatusOK, resp)
}

// accountID is the account field of an ARN (arn:aws:lambda:REGION:ACCOUNT:function:NAME).
func accountID(arn string) string {
	if parts := strings.Split(arn, ":"); len(parts) > 4 {
		return parts[4]
	}
	return ""
}

// next: the extension is done with its last event; it blocks until the next one.
func (es *extSet) next(rw http.ResponseWriter, r *http.Request, x *extension) {
	p := es.p
	p.mu.Lock()
	if x.errored {
		p.mu.Unlock()
		runtimeErr(rw, http.StatusInternalServerError, "Extension.Failed", "this extension reported an error: exit")
		return
	}
	if x.shutSent {
		// Done with its SHUTDOWN: it waits to be stopped.
		if !x.shutClosed {
			x.shutClosed = true
			close(x.shutDone)
		}
		p.mu.Unlock()
		select {
		case <-r.Context().Done():
		case <-es.killed:
		}
		return
	}
	if !x.idle {
		x.idle = true
		if es.pr != nil {
			p.envMaybeFreeLocked(es.pr)
		}
	}
	p.mu.Unlock()
	select {
	case ev := <-x.events:
		if ev.shutdown {
			p.mu.Lock()
			x.shutSent = true
			p.mu.Unlock()
		}
		body := ev.body
		h := rw.Header()
		h["Content-Type"] = []string{"application/json"}
		h["Lambda-Extension-Event-Identifier"] = []string{newRequestID()}
		h["Lambda-Extension-Identifier"] = []string{x.id}
		rw.WriteHeader(http.StatusOK)
		_, _ = rw.Write(body)
	case <-r.Context().Done():
	case <-es.killed:
	}
}

func (es *extSet) reportError(rw http.ResponseWriter, r *http.Request, x *extension, verb string) {
	p := es.p
	body, _, _ := readBody(r, 64<<10)
	errType := r.Header.Get("Lambda-Extension-Function-Error-Type")
	if errType == "" {
		runtimeErr(rw, http.StatusBadRequest, "InvalidRequest", "the Lambda-Extension-Function-Error-Type header is required")
		return
	}
	p.mu.Lock()
	initOver := es.phase == extPhaseReady || (es.pr != nil && es.pr.initDone)
	p.mu.Unlock()
	kind, ourType := "init", "Extension.InitError"
	if verb == "exit/error" {
		kind, ourType = "exit", "Extension.ExitError"
	} else if initOver {
		runtimeErr(rw, http.StatusForbidden, "InvalidStateTransition", "init/error after init; use exit/error")
		return
	}
	msg := fmt.Sprintf("extension %s reported an %s error: %s", x.name, kind, errType)
	var e struct {
		ErrorMessage string `json:"errorMessage"`
	}
	if json.Unmarshal(body, &e) == nil && e.ErrorMessage != "" {
		msg += ": " + e.ErrorMessage
	}
	p.mu.Lock()
	x.errored = true
	p.mu.Unlock()
	rw.Header()["Lambda-Extension-Identifier"] = []string{x.id}
	accepted(rw)
	es.failWith(ourType, msg)
}

// envMaybeFreeLocked runs when the runtime or an extension calls next: once all of them wait and the
// runtime's REPORT is in hand, the phase (init or invoke) is over and the environment takes its next
// invocation.
func (p *pool) envMaybeFreeLocked(pr *proc) {
	es := pr.ext
	if pr.dead || es.fail != nil || !es.runtimeWaiting || !es.idleLocked() || es.awaitReport {
		return // a failed environment is being reset: it takes nothing more
	}
	es.runtimeWaiting = false
	if !pr.initDone {
		p.envInitDoneLocked(pr)
		es.phase = extPhaseReady
		es.tel.initReport(initType, "success", pr.coldInit)
		es.tel.initOver()
	}
	if pd := es.pending; pd != nil {
		es.pending = nil
		if pd.timer != nil {
			pd.timer.Stop()
		}
		p.logReport(pr, pd.inv, pd.ri)
	}
	p.freeLocked(pr)
}

// reportWhenDone writes inv's REPORT now, or, when extensions registered for INVOKE, once they are done.
func (p *pool) reportWhenDone(pr *proc, inv *invocation, ri reportInfo) {
	p.mu.Lock()
	es := pr.ext
	if es == nil || !es.awaitReport {
		p.mu.Unlock()
		p.logReport(pr, inv, ri)
		return
	}
	es.awaitReport = false
	es.tel.runtimeDone(inv, telemetryStatus(ri.status), ri.errType)
	pd := &pendingReport{inv: inv, ri: ri}
	es.pending = pd
	pd.timer = time.AfterFunc(time.Until(inv.deadline()), func() { p.extDeadline(pr, pd) })
	p.envMaybeFreeLocked(pr)
	p.mu.Unlock()
}

// extDeadline: the extensions were still busy with inv at its deadline; the environment is reset.
func (p *pool) extDeadline(pr *proc, pd *pendingReport) {
	p.mu.Lock()
	es := pr.ext
	if es.pending != pd {
		p.mu.Unlock()
		return
	}
	es.pending = nil
	if es.resetReason == "" {
		es.resetReason = "timeout"
	}
	pd.ri.status = "timeout"
	pd.ri.errType = ""
	p.mu.Unlock()
	msg := fmt.Sprintf("%s %s Task timed out after %.2f seconds (extensions still running after the response)",
		time.Now().UTC().Format("2006-01-02T15:04:05.000Z"), pd.inv.id, p.cfg.Timeout.Seconds())
	p.metrics.timeouts.Add(1)
	p.logReport(pr, pd.inv, pd.ri, msg)
	pr.kill()
}

// initType is the environment's platform.init* initializationType.
const initType = "on-demand"

func telemetryStatus(reportStatus string) string {
	switch reportStatus {
	case "timeout":
		return "timeout"
	case "error":
		return "error"
	}
	return "success"
}

// shutdownReason is what the extensions of pr's environment are told when it ends.
func (p *pool) shutdownReason(pr *proc) string {
	if p.stopping.Load() {
		return "spindown"
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if pr.ext.resetReason != "" {
		return pr.ext.resetReason
	}
	if pr.killed.Load() {
		return "timeout" // the agent killed the runtime at an invocation's deadline
	}
	return "failure"
}
