// Command kubelambda-agent runs in every function pod: it serves the invoke endpoint to the
// gateway and the Lambda Runtime API to the runtime worker processes it starts.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "copy-opt" { // install.go
		if err := copyOpt(os.Args[2:], os.Getenv); err != nil {
			fmt.Fprintf(os.Stderr, "kubelambda-agent copy-opt: %v\n", err)
			os.Exit(1)
		}
		return
	}
	cfg, err := parseConfig(os.Args[1:], os.LookupEnv)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "kubelambda-agent: bad configuration:\n%v\n", err)
		os.Exit(2)
	}
	if err := run(cfg); err != nil {
		fmt.Fprintf(os.Stderr, "kubelambda-agent: %v\n", err)
		os.Exit(1)
	}
}

func run(cfg *Config) error {
	_, procsSet := os.LookupEnv("GOMAXPROCS")
	runtime.GOMAXPROCS(agentProcs(cfg.Workers, runtime.GOMAXPROCS(0), procsSet))
	log := newLogger(os.Stdout, os.Stderr)
	log.format.Store(&cfg.Format)
	m := newMetrics(cfg.Workers)
	ship, err := newShipper(cfg.Log.URL, cfg.Log.Namespace, cfg.FunctionName, cfg.FunctionVersion, cfg.Log.Pod, cfg.Log.Buffer)
	if err != nil {
		return err
	}
	log.ship, m.ship = ship, ship
	ship.setRenew(cfg.Log.Renew)
	ship.start()
	p := newPool(cfg, log, m)

	// Listen everywhere before the first runtime starts, so its first request finds a server.
	invokeLn, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listening for invokes on %s: %w", cfg.Listen, err)
	}
	servers, err := serveRuntimeAPI(p)
	if err != nil {
		return err
	}
	sp := newSpecializer(cfg, p, log)
	gate := &frontGate{next: newFrontMux(cfg, p, m, sp)}
	front := &http.Server{Handler: gate, ReadHeaderTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute}
	go func() { _ = front.Serve(invokeLn) }()
	p.start()
	log.line(fmt.Sprintf("kubelambda-agent: serving invokes on %s, Runtime API on %s (+%d), %d worker(s) of %q%s",
		invokeLn.Addr(), cfg.RuntimeAPI, cfg.Workers-1, cfg.Workers, cfg.RuntimeCmd, cfg.Generic.describe()))

	if cfg.RuntimeSubst != "" {
		log.line("kubelambda-agent: RUNTIME SUBSTITUTED (dev opt-in): " + cfg.RuntimeSubst)
	}

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	s := <-sig
	gate.closing.Store(true)
	p.beginDrain()
	log.line(fmt.Sprintf("kubelambda-agent: received %v, draining for up to %v", s, cfg.DrainTimeout))
	if !p.waitDrained(cfg.DrainTimeout) {
		log.line("kubelambda-agent: drain timed out; stopping with invocations in flight")
	}
	p.stop()
	stopServing(front, gate, lingerQuiet, lingerMax)
	for _, srv := range servers {
		_ = srv.Close()
	}
	log.line("kubelambda-agent: stopped")
	ship.close(logShutdownFlush)
	return nil
}

// serveRuntimeAPI starts one Runtime API server per worker.
func serveRuntimeAPI(p *pool) ([]*http.Server, error) {
	var servers []*http.Server
	for _, w := range p.workers {
		ln, err := net.Listen("tcp", w.addr)
		if err != nil {
			for _, srv := range servers {
				_ = srv.Close()
			}
			return nil, fmt.Errorf("listening for the Runtime API of worker %d on %s: %w", w.index, w.addr, err)
		}
		srv := &http.Server{Handler: &runtimeAPI{pool: p, w: w}, ReadHeaderTimeout: time.Minute}
		servers = append(servers, srv)
		go func() { _ = srv.Serve(ln) }()
	}
	return servers, nil
}

func newFrontMux(cfg *Config, p *pool, m *metrics, sp *specializer) http.Handler {
	ages := newInflightAges()
	inv := ages.track(&invokeAPI{pool: p, cfg: cfg, metrics: m, auth: sp.auth})
	mux := http.NewServeMux()
	mux.Handle("/invoke", sp.auth.guard(inv, false))
	mux.Handle("/2015-03-31/functions/{name}/invocations", sp.auth.guard(inv, false))
	mux.Handle("GET /inflight", sp.auth.guard(http.HandlerFunc(ages.serveHTTP), true))
	mux.Handle("GET /metrics", sp.auth.guard(http.HandlerFunc(m.serveHTTP), true))
	mux.Handle("/specialize", sp.auth.guard(sp, false))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !p.isReady() || sp.consumed() {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("not ready\n"))
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	return mux
}

// After SIGTERM the front server lingers (lingerQuiet without a request, at most lingerMax) before it closes.
const (
	lingerQuiet = time.Second
	lingerMax   = 5 * time.Second
)

// frontGate is the front server's handler while the agent shuts down. Closing a kept-alive connection races
// the gateway writing its next request on it: the gateway saw the connection drop with no answer, could not
// know whether the invocation ran, and answered the caller 500 ServiceException (the weighted-alias test's
// rare 500s, when an instance was scaled down while the gateway had not yet seen its endpoint go). So from
// SIGTERM on, every answer (503 "shutting down" for a new invocation) carries Connection: close, which closes
// each connection the gateway uses with an answer, and the server stays up until requests stop coming.
type frontGate struct {
	next    http.Handler
	closing atomic.Bool
	last    atomic.Int64 // when the latest request came (Unix ns)
}

func (g *frontGate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g.last.Store(time.Now().UnixNano())
	if g.closing.Load() {
		w.Header()["Connection"] = []string{"close"}
	}
	g.next.ServeHTTP(w, r)
}

// stopServing answers with Connection: close until no request has come for quiet (at most limit), then
// shuts the server down (its idle connections closed, active ones given 2 s).
func stopServing(front *http.Server, g *frontGate, quiet, limit time.Duration) {
	g.closing.Store(true)
	deadline := time.Now().Add(limit)
	for {
		wait := quiet - time.Since(time.Unix(0, g.last.Load()))
		if wait <= 0 || !time.Now().Before(deadline) {
			break
		}
		time.Sleep(min(wait, time.Until(deadline)))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = front.Shutdown(ctx)
}

// agentProcs is the agent's GOMAXPROCS: at most one per worker. A worker runs one invocation at a time, so the
// agent never has more invocations to serve at once than it has workers; a P more than that only spun idle at
// each hand-over of a call (invoke, the runtime's next, its response): with 1 worker, GOMAXPROCS 1 cost 12-25 % less
// CPU per call than 2 (bench/agent_bench.py, {} and 52 KB events, load 20). GOMAXPROCS in the environment decides
// when set; the runtime workers never see this setting (it is not an environment variable).
func agentProcs(workers, current int, fromEnv bool) int {
	if fromEnv || workers >= current {
		return current
	}
	return max(workers, 1)
}
