package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Each worker slot runs one runtime process at a time (a "proc"); a proc serves one invocation at a
// time, like a Lambda execution environment. The pool admits an invocation only while fewer
// invocations are in flight than there are workers, so nothing queues behind a busy worker: an
// admitted invocation waits at most for a worker that is finishing its previous call or (re)starting.

type outcome int

const (
	outSuccess outcome = iota
	outFunctionError
	outTimeout
	outCrash
	outInitError
	outResponseTooLarge
	outRefusedBusy
	outRefusedDraining
	numOutcomes
)

var outcomeNames = [numOutcomes]string{
	"success", "function_error", "timeout", "crash", "init_error", "response_too_large",
	"refused_busy", "refused_draining",
}

// result is what the caller of an invocation gets.
type result struct {
	outcome outcome
	body    []byte // function response or error JSON
	errType string // errorType for function errors
}

// invocation is one call in flight. The goroutine that takes it away from its proc (or from the
// waiter list) under the pool lock is its owner and the only one that calls finish.
type invocation struct {
	id            string
	payload       []byte
	deadlineNs    atomic.Int64  // see deadline()
	moved         chan struct{} // signalled when the deadline changes after receipt (the invoke handler re-arms)
	ownDeadline   bool          // the caller set Lambda-Runtime-Deadline-Ms: it holds from receipt, init included
	arn           string
	traceID       string // X-Ray form (Lambda-Runtime-Trace-Id, _X_AMZN_TRACE_ID)
	traceparent   string // W3C Trace Context, when the caller sent one
	clientContext string
	cognito       string

	tail        *logCapture               // non-nil when the caller asked for X-Amz-Log-Type: Tail
	proc        *proc                     // assigned under pool.mu
	started     atomic.Pointer[time.Time] // when the runtime received the event
	runtimeDone atomic.Bool               // platform.runtimeDone sent (telemetry.go)
	delivered   atomic.Bool               // the runtime's "next" has written the payload: nothing reads it any more
	done        chan struct{}
	res         result
}

// initWaitLimit is how long an invocation may wait for a runtime still initialising before its own timeout
// starts: Lambda's limit on the Init phase, which does not count toward the function's timeout.
var initWaitLimit = 10 * time.Second

// deadline is when the invocation times out: receipt + timeout when a runtime is ready for it; while it waits for
// a runtime's init, receipt + initWaitLimit + timeout; once a runtime takes it, that moment + timeout. A deadline
// the caller sent is never extended.
func (inv *invocation) deadline() time.Time { return time.Unix(0, inv.deadlineNs.Load()) }

func (inv *invocation) setDeadline(t time.Time) {
	inv.deadlineNs.Store(t.UnixNano())
	if inv.moved != nil {
		select {
		case inv.moved <- struct{}{}:
		default: // already signalled: the handler reads the latest deadline
		}
	}
}

// markStarted records when the event reached the runtime (or the caller got an answer without one),
// once; later calls keep the first time.
func (inv *invocation) markStarted() {
	now := time.Now()
	inv.started.CompareAndSwap(nil, &now)
}

func (inv *invocation) sinceStart() time.Duration {
	if t := inv.started.Load(); t != nil {
		return time.Since(*t)
	}
	return 0
}

func (inv *invocation) finish(r result) {
	inv.res = r
	close(inv.done)
}

// proc is one running runtime process.
type proc struct {
	w        *worker
	pid      atomic.Int64 // 0 until started
	started  time.Time
	events   chan *invocation // capacity 1: a proc holds at most one invocation
	exited   chan struct{}
	initDone bool        // first "next" seen; pool.mu
	cur      *invocation // the invocation it is running; pool.mu
	dead     bool        // pool.mu
	coldInit time.Duration
	initFrom time.Time   // when a pre-started (generic) runtime was given its function; pool.mu
	coldSeen atomic.Bool // Init Duration reported already
	killed   atomic.Bool // the agent killed it (timeout, shutdown)
	oomKills int64       // the memory cgroup's OOM kill count when it started
	log      procLog
	rss      rssReader
	ext      *extSet // its environment's extensions (extensions.go)

	initErrMu   sync.Mutex
	initErr     []byte // body of runtime/init/error
	initErrType string
}

type worker struct {
	index   int
	addr    string // Runtime API address
	cur     atomic.Pointer[proc]
	restart chan struct{}          // asks a worker parked after an init failure to start again
	ext     atomic.Pointer[extSet] // the extensions of the current environment, for the Extensions API
	failErr result                 // the last init failure; pool.mu
}

type pool struct {
	cfg     *Config
	log     *logger
	metrics *metrics
	env     []string

	mu       sync.Mutex
	workers  []*worker
	ready    []*proc       // procs blocked in "next"
	waiters  []*invocation // admitted invocations without a proc yet, oldest first
	failed   []*worker     // workers parked after an init failure
	busy     int           // admitted invocations not yet finished
	initLeft int           // workers that have neither initialised nor failed once
	drainCh  chan struct{} // closed when draining and nothing is in flight
	draining bool
	stopping atomic.Bool
	initDone chan struct{} // closed once every worker has initialised or failed init
	wg       sync.WaitGroup

	// Generic (warm-pool) mode, see specialize.go. released is closed when the pod gets its function (at
	// once when not generic); live is set after the configuration is final, so invokes read it race-free.
	released chan struct{}
	live     atomic.Bool
	overlay  []byte        // the environment a pre-started runtime adopts; pool.mu
	parked   atomic.Int32  // pre-started runtimes waiting for their function
	stopCh   chan struct{} // closed by stop
	oom      *oomCounter
}

func newPool(cfg *Config, log *logger, m *metrics) *pool {
	m.memoryMB.Store(int64(cfg.MemoryMB))
	p := &pool{
		cfg: cfg, log: log, metrics: m,
		env:      withLayerPaths(cfg, workerEnv(cfg, os.Environ())),
		initLeft: cfg.Workers,
		initDone: make(chan struct{}),
		drainCh:  make(chan struct{}),
		released: make(chan struct{}),
		stopCh:   make(chan struct{}),
		oom:      newOOMCounter(),
	}
	if cfg.Generic == genericOff {
		close(p.released)
		p.live.Store(true)
	}
	for i := 0; i < cfg.Workers; i++ {
		p.workers = append(p.workers, &worker{index: i, addr: cfg.workerAddr(i), restart: make(chan struct{}, 1)})
	}
	return p
}

// start launches the supervisors; each keeps one proc running for its worker.
func (p *pool) start() {
	for _, w := range p.workers {
		p.wg.Add(1)
		go p.supervise(w)
	}
}

// submit admits inv and hands it to a ready proc, parks it until a proc is ready, or answers it
// at once (refusal or a pending init error). The caller then waits on inv.done until its deadline.
func (p *pool) submit(inv *invocation) (refused outcome, ok bool) {
	p.mu.Lock()
	if p.draining {
		p.mu.Unlock()
		return outRefusedDraining, false
	}
	if p.busy >= len(p.workers) {
		p.mu.Unlock()
		return outRefusedBusy, false
	}
	p.busy++
	p.metrics.inflight.Add(1)
	if n := len(p.ready); n > 0 {
		pr := p.ready[n-1]
		p.ready = p.ready[:n-1]
		pr.cur, inv.proc = inv, pr
		pr.ext.invokeLocked(inv)
		p.mu.Unlock()
		pr.events <- inv
		return 0, true
	}
	if n := len(p.failed); n > 0 {
		// Like Lambda, a function whose init failed answers each invoke with the init error and
		// tries to initialise again for the next one.
		w := p.failed[n-1]
		p.failed = p.failed[:n-1]
		r := w.failErr
		p.decBusyLocked()
		p.mu.Unlock()
		p.answerWithoutWorker(inv, r, reportInfo{status: "error", errType: r.errType, memoryMB: p.cfg.MemoryMB})
		select {
		case w.restart <- struct{}{}:
		default:
		}
		return 0, true
	}
	if !inv.ownDeadline {
		inv.setDeadline(time.Now().Add(initWaitLimit + p.cfg.Timeout))
	}
	p.waiters = append(p.waiters, inv)
	p.mu.Unlock()
	return 0, true
}

// expire ends inv at its deadline if nobody finished it first. It returns false, doing nothing, when the deadline
// moved meanwhile (a runtime took it after its init: see invocation.deadline).
func (p *pool) expire(inv *invocation) bool {
	p.mu.Lock()
	if time.Now().Before(inv.deadline()) {
		p.mu.Unlock()
		return false
	}
	pr := inv.proc
	if pr == nil {
		for i, w := range p.waiters {
			if w == inv {
				p.waiters = append(p.waiters[:i], p.waiters[i+1:]...)
				p.decBusyLocked()
				p.mu.Unlock()
				p.finishTimeout(inv, nil)
				return true
			}
		}
		p.mu.Unlock()
		return true // answered with an init error meanwhile
	}
	if pr.cur != inv {
		p.mu.Unlock()
		return true // the runtime answered just in time
	}
	pr.cur = nil
	p.decBusyLocked()
	p.mu.Unlock()
	p.finishTimeout(inv, pr)
	return true
}

func (p *pool) finishTimeout(inv *invocation, pr *proc) {
	msg := fmt.Sprintf("Task timed out after %.2f seconds", p.cfg.Timeout.Seconds())
	r := result{outcome: outTimeout, errType: "Sandbox.Timedout",
		body: errorJSON("Sandbox.Timedout", fmt.Sprintf("RequestId: %s Error: %s", inv.id, msg))}
	p.metrics.timeouts.Add(1)
	timedOut := fmt.Sprintf("%s %s %s", time.Now().UTC().Format("2006-01-02T15:04:05.000Z"), inv.id, msg)
	if pr == nil { // still waiting for a worker
		p.answerWithoutWorker(inv, r, reportInfo{status: "timeout", memoryMB: p.cfg.MemoryMB}, timedOut)
		return
	}
	ri := reportInfo{status: "timeout", memoryMB: p.cfg.MemoryMB, maxMemMB: pr.rss.peakMB(int(pr.pid.Load())), initDur: p.takeCold(pr)}
	// Logged before the kill, so the lines follow whatever the runtime printed.
	p.logReport(pr, inv, ri, timedOut)
	pr.kill()
	inv.finish(r)
}

// answerWithoutWorker answers inv with r when no worker ran it (init error, timeout while waiting).
func (p *pool) answerWithoutWorker(inv *invocation, r result, ri reportInfo, extra ...string) {
	inv.markStarted()
	ri.subst = p.cfg.RuntimeSubst
	lines := append([]string{startLine(inv.id, p.cfg.FunctionVersion)}, extra...)
	lines = append(lines, formatEnd(inv.id), formatReport(inv.id, inv.sinceStart(), ri))
	p.log.direct(inv.tail, true, lines...)
	inv.finish(r)
}

// logStart writes START for inv, in order with pr's output.
func (p *pool) logStart(pr *proc, inv *invocation) {
	line := startLine(inv.id, p.cfg.FunctionVersion)
	if !pr.log.emit(inv.tail, inv.id, line) {
		p.log.direct(inv.tail, false, line)
	}
	if pr.ext != nil {
		pr.ext.tel.start(inv, p.cfg.FunctionVersion)
	}
}

// logReport writes extra lines, END and REPORT for inv, in order with pr's output.
func (p *pool) logReport(pr *proc, inv *invocation, ri reportInfo, extra ...string) {
	ri.subst = p.cfg.RuntimeSubst
	d := inv.sinceStart()
	p.metrics.report(ri)
	lines := append(extra, formatEnd(inv.id), formatReport(inv.id, d, ri))
	if !pr.log.emit(nil, "", lines...) {
		p.log.direct(inv.tail, true, lines...)
	}
	if pr.ext != nil {
		pr.ext.tel.report(inv, d, ri)
	}
}

// takeCold returns the proc's Init Duration the first time it is asked, then zero.
func (p *pool) takeCold(pr *proc) time.Duration {
	if pr == nil || pr.coldSeen.Swap(true) {
		return 0
	}
	return pr.coldInit
}

// nextReady is called when pr asks for its next event: pr is free again.
func (p *pool) nextReady(pr *proc) (stale *invocation) {
	p.mu.Lock()
	if pr.dead {
		p.mu.Unlock()
		return nil
	}
	if pr.cur != nil {
		select {
		case inv := <-pr.events:
			// Handed over but never delivered (the previous "next" went away): this "next" gets it.
			pr.events <- inv
			p.mu.Unlock()
			return nil
		default:
		}
		// "next" without a response: the runtime gave up on the event.
		stale = pr.cur
		pr.cur = nil
		pr.ext.awaitReport = false
		p.decBusyLocked()
	}
	if !pr.ext.runtimeInit {
		pr.ext.runtimeInit = true
		pr.ext.tel.initRuntimeDone(initType, "success")
	}
	// The phase (init or invoke) ends when the runtime and every extension have called next.
	pr.ext.runtimeWaiting = true
	p.envMaybeFreeLocked(pr)
	p.mu.Unlock()
	return stale
}

// envInitDoneLocked: the runtime and every extension of pr's environment have initialised.
func (p *pool) envInitDoneLocked(pr *proc) {
	pr.initDone = true
	from := pr.started
	if !pr.initFrom.IsZero() {
		from = pr.initFrom
	}
	if !pr.ext.launched.IsZero() && pr.initFrom.IsZero() {
		from = pr.ext.launched // Init Duration covers the extensions' init
	}
	pr.coldInit = time.Since(from)
	p.metrics.initDuration.observe(pr.coldInit)
	p.initFinishedLocked()
}

// freeLocked gives pr the oldest waiting invocation, or lists it as ready.
func (p *pool) freeLocked(pr *proc) {
	if len(p.waiters) > 0 {
		inv := p.waiters[0]
		p.waiters = p.waiters[1:]
		if !inv.ownDeadline { // the wait for init did not count: the function's timeout starts now
			inv.setDeadline(time.Now().Add(p.cfg.Timeout))
		}
		pr.cur, inv.proc = inv, pr
		pr.ext.invokeLocked(inv)
		pr.events <- inv
	} else {
		p.ready = append(p.ready, pr)
	}
}

// unready takes pr out of the ready list when its "next" request went away.
func (p *pool) unready(pr *proc) {
	p.mu.Lock()
	p.removeReadyLocked(pr)
	p.mu.Unlock()
}

func (p *pool) removeReadyLocked(pr *proc) {
	for i, r := range p.ready {
		if r == pr {
			p.ready = append(p.ready[:i], p.ready[i+1:]...)
			return
		}
	}
}

// complete takes inv away from pr if pr still runs it; the caller then owns inv.
func (p *pool) complete(pr *proc, id string) *invocation {
	p.mu.Lock()
	inv := pr.cur
	if inv == nil || inv.id != id {
		p.mu.Unlock()
		return nil
	}
	pr.cur = nil
	// With extensions registered for INVOKE, the REPORT waits for them (reportWhenDone).
	pr.ext.awaitReport = pr.ext.hasInvokeLocked()
	p.decBusyLocked()
	p.mu.Unlock()
	return inv
}

func (p *pool) current(pr *proc) *invocation {
	p.mu.Lock()
	defer p.mu.Unlock()
	return pr.cur
}

func (p *pool) decBusyLocked() {
	p.busy--
	p.metrics.inflight.Add(-1)
	if p.draining && p.busy == 0 {
		closeOnce(p.drainCh)
	}
}

func (p *pool) initFinishedLocked() {
	p.initLeft--
	if p.initLeft == 0 {
		close(p.initDone)
	}
}

func closeOnce(ch chan struct{}) {
	select {
	case <-ch:
	default:
		close(ch)
	}
}

// beginDrain refuses new invocations from now on.
func (p *pool) beginDrain() {
	p.mu.Lock()
	p.draining = true
	if p.busy == 0 {
		closeOnce(p.drainCh)
	}
	p.mu.Unlock()
}

// waitDrained waits for the admitted invocations to finish, at most d.
func (p *pool) waitDrained(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.drainCh:
		return true
	case <-t.C:
		return false
	}
}

// drain refuses new invocations and waits for the admitted ones, at most d.
func (p *pool) drain(d time.Duration) bool {
	p.beginDrain()
	return p.waitDrained(d)
}

// stop kills every proc and waits for the supervisors.
func (p *pool) stop() {
	p.stopping.Store(true)
	closeOnce(p.stopCh)
	for _, w := range p.workers {
		if pr := w.cur.Load(); pr != nil {
			pr.kill()
		}
		select {
		case w.restart <- struct{}{}:
		default:
		}
	}
	p.wg.Wait()
}

func (p *pool) isReady() bool {
	if !p.live.Load() {
		// A generic pod is ready for the pool once its runtimes wait for a function (prestart), or at once.
		return p.cfg.Generic == genericDeferred || int(p.parked.Load()) == len(p.workers)
	}
	select {
	case <-p.initDone:
	default:
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return !p.draining
}

func (pr *proc) kill() {
	pr.killed.Store(true)
	// The runtime runs in its own process group so that its children go too.
	if pid := int(pr.pid.Load()); pid > 0 { // never -0: that is our own group
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	}
}

// supervise keeps one proc running for w until the pool stops.
func (p *pool) supervise(w *worker) {
	defer p.wg.Done()
	if p.cfg.Generic == genericDeferred {
		select {
		case <-p.released:
		case <-p.stopCh:
			return
		}
	}
	firstInit := true
	quickExits := 0 // consecutive exits soon after start that the agent did not cause
	for !p.stopping.Load() {
		pr, err := p.spawn(w)
		var r result
		var failed *initFailure
		if errors.As(err, &failed) {
			r = failed.res
		} else if err != nil {
			r = result{outcome: outInitError, errType: "Runtime.InvalidEntrypoint",
				body: errorJSON("Runtime.InvalidEntrypoint", err.Error())}
			p.log.line(fmt.Sprintf("kubelambda-agent: worker %d could not start %q: %v", w.index, p.cfg.RuntimeCmd[0], err))
		} else {
			r = p.waitProc(pr)
		}
		if p.stopping.Load() {
			return
		}
		if r.outcome == outInitError {
			p.mu.Lock()
			if firstInit {
				firstInit = false
				p.initFinishedLocked()
			}
			if len(p.waiters) > 0 {
				inv := p.waiters[0]
				p.waiters = p.waiters[1:]
				p.decBusyLocked()
				p.mu.Unlock()
				p.answerWithoutWorker(inv, r, reportInfo{status: "error", errType: r.errType, memoryMB: p.cfg.MemoryMB})
			} else {
				w.failErr = r
				p.failed = append(p.failed, w)
				p.mu.Unlock()
				<-w.restart // an invocation wants another try, or the pool stops
			}
		} else if pr != nil {
			if pr.initDone {
				firstInit = false
			}
			// A runtime that keeps exiting on its own right after starting is restarted with a
			// growing delay (50 ms, 100 ms, ... 10 s) rather than in a busy loop.
			if !pr.killed.Load() && time.Since(pr.started) < time.Second {
				quickExits++
				delay := min(50*time.Millisecond<<min(quickExits-1, 8), 10*time.Second)
				t := time.NewTimer(delay)
				select {
				case <-t.C:
				case <-w.restart: // the pool stops
				}
				t.Stop()
			} else {
				quickExits = 0
			}
		}
		p.metrics.restarts.Add(1)
	}
}

// spawn starts a runtime process for w.
func (p *pool) spawn(w *worker) (*proc, error) {
	argv := p.cfg.RuntimeCmd
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = p.cfg.TaskRoot
	if p.cfg.WorkDir != "" {
		cmd.Dir = p.cfg.WorkDir
	}
	p.mu.Lock()
	env := p.env
	waiting := !p.live.Load() && p.cfg.Generic == genericPrestart
	p.mu.Unlock()
	cmd.Env = append(env[:len(env):len(env)], "AWS_LAMBDA_RUNTIME_API="+w.addr)
	if waiting {
		cmd.Env = append(cmd.Env, awaitSpecializationEnv+"=1")
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// Extension init: the external extensions start and register before the runtime starts.
	es := p.newExtSet(w)
	w.ext.Store(es)
	es.launched = time.Now()
	if err := es.launch(env); err != nil {
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		es.shutdown("failure")
		return nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = outW, errW
	pr := &proc{w: w, events: make(chan *invocation, 1), exited: make(chan struct{}), ext: es}
	pr.log.w = outW // kept for the agent's own lines; closed when the process has exited
	pr.oomKills = p.oom.kills()
	// Publish before start: the runtime may call "next" as soon as it runs.
	pr.started = time.Now()
	w.cur.Store(pr)
	err = cmd.Start()
	errW.Close()
	if err != nil {
		pr.log.close()
		outR.Close()
		errR.Close()
		es.shutdown("failure")
		return nil, err
	}
	pr.pid.Store(int64(cmd.Process.Pid))
	// From here an extension failure kills this runtime (extSet.failWith); one that came before is
	// applied now. The extensions may have called next already: the phase may be over.
	p.mu.Lock()
	es.pr = pr
	early := es.fail
	if early != nil {
		pr.initErrMu.Lock()
		pr.initErr, pr.initErrType = early.body, early.errType
		pr.initErrMu.Unlock()
	} else {
		p.envMaybeFreeLocked(pr)
	}
	p.mu.Unlock()
	if early != nil {
		pr.kill()
	}
	go p.log.pipe(outR, &lineTee{w: p.log.stdout, tel: es.tel, kind: "function"}, &pr.log, nil)
	go p.log.pipe(errR, &lineTee{w: p.log.stderr, tel: es.tel, kind: "function"}, nil, &pr.log)
	go func() {
		err := cmd.Wait()
		// Whatever the runtime left behind in its process group goes with it, as a sandbox would.
		if pid := int(pr.pid.Load()); pid > 0 {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
		}
		p.exitedProc(pr, err)
	}()
	return pr, nil
}

// waitProc blocks until pr exits and reports whether it failed before initialising.
func (p *pool) waitProc(pr *proc) result {
	<-pr.exited
	// The environment ends with its runtime: SHUTDOWN to the extensions, then they are stopped.
	pr.ext.shutdown(p.shutdownReason(pr))
	p.mu.Lock()
	initialised := pr.initDone
	p.mu.Unlock()
	if initialised {
		return result{}
	}
	pr.initErrMu.Lock()
	defer pr.initErrMu.Unlock()
	if pr.initErr != nil {
		return result{outcome: outInitError, errType: pr.initErrType, body: pr.initErr}
	}
	return result{outcome: outInitError, errType: "Runtime.ExitError",
		body: errorJSON("Runtime.ExitError", "RequestId: - Error: Runtime exited without providing a reason")}
}

// exitedProc runs once the process is gone: it fails the invocation the proc was running.
func (p *pool) exitedProc(pr *proc, waitErr error) {
	p.mu.Lock()
	pr.dead = true
	p.removeReadyLocked(pr)
	inv := pr.cur
	if inv != nil {
		pr.cur = nil
		p.decBusyLocked()
	}
	pending := pr.ext.pending // answered, its extensions still at work
	pr.ext.pending = nil
	p.mu.Unlock()
	close(pr.exited)
	pr.rss.close()
	if pending != nil {
		pending.timer.Stop()
		pending.ri.status, pending.ri.errType = "error", "Runtime.ExitError"
		p.logReport(pr, pending.inv, pending.ri)
	}
	if inv == nil {
		pr.log.close()
		return
	}
	reason := "Runtime exited without providing a reason"
	if waitErr != nil {
		reason = "Runtime exited with error: " + waitErr.Error()
	}
	ri := reportInfo{status: "error", errType: "Runtime.ExitError", memoryMB: p.cfg.MemoryMB, initDur: p.takeCold(pr)}
	// The kernel's OOM killer, not the agent, killed it: Lambda's out-of-memory error, with the memory
	// used at the limit (the cgroup's limit is the function's memory size).
	if !pr.killed.Load() && killedBySIGKILL(waitErr) && p.oom.kills() > pr.oomKills {
		ri.errType, ri.maxMemMB = "Runtime.OutOfMemory", p.cfg.MemoryMB
	}
	p.logReport(pr, inv, ri)
	pr.log.close()
	inv.finish(result{outcome: outCrash, errType: ri.errType,
		body: errorJSON(ri.errType, fmt.Sprintf("RequestId: %s Error: %s", inv.id, reason))})
}

// workerEnv is the environment of every runtime process: the pod's, minus the agent's own
// settings, plus the Lambda variables.
func workerEnv(c *Config, base []string) []string {
	lambda := map[string]string{
		"_HANDLER":                        c.Handler,
		"LAMBDA_TASK_ROOT":                c.TaskRoot,
		"LAMBDA_RUNTIME_DIR":              c.RuntimeDir,
		"AWS_LAMBDA_FUNCTION_NAME":        c.FunctionName,
		"AWS_LAMBDA_FUNCTION_VERSION":     c.FunctionVersion,
		"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": fmt.Sprint(c.MemoryMB),
		"AWS_LAMBDA_LOG_GROUP_NAME":       "/aws/lambda/" + c.FunctionName,
		"AWS_LAMBDA_LOG_STREAM_NAME":      logStreamName(c.FunctionVersion, time.Now()),
		"AWS_LAMBDA_INITIALIZATION_TYPE":  "on-demand",
		"AWS_REGION":                      c.Region,
		"AWS_DEFAULT_REGION":              c.Region,
		"AWS_EXECUTION_ENV":               "AWS_Lambda_" + c.RuntimeName,
	}
	c.Format.runtimeEnv(lambda)
	defaults := map[string]string{"TZ": "UTC", "LANG": "en_US.UTF-8"}
	var env []string
	for _, kv := range base {
		key, _, _ := cut(kv, '=')
		if _, ours := lambda[key]; ours || key == "AWS_LAMBDA_RUNTIME_API" || hasPrefix(key, "KUBELAMBDA_") {
			continue
		}
		delete(defaults, key)
		env = append(env, kv)
	}
	for _, k := range sortedKeys(lambda) {
		env = append(env, k+"="+lambda[k])
	}
	for _, k := range sortedKeys(defaults) {
		env = append(env, k+"="+defaults[k])
	}
	return env
}

func logStreamName(version string, now time.Time) string {
	return fmt.Sprintf("%s/[%s]%s", now.UTC().Format("2006/01/02"), version, randomHex(16))
}
