package main

// The agent's admin endpoints (/invoke, /specialize, /metrics) answer only a caller that shows this pod's
// token (docs/security.md, "The gateway authenticates to agents"): "Authorization: Bearer <token>". The token
// is derived by the operator and the gateway from a platform key; a pod gets only its own:
//
//   - a function pod: its Function's token (KUBELAMBDA_AGENT_TOKEN, from the Function's <name>-agent Secret);
//   - a warm-pool pod: its pool's token until POST /specialize (which the pool token authorises) hands it the
//     function's token, which then replaces it.
//
// /metrics also accepts the platform's metrics token, for Prometheus. The pod holds only its SHA-256
// (KUBELAMBDA_AGENT_METRICS_TOKEN_SHA256, hex): whoever reads the pod's environment or its Secret (a tenant may)
// learns nothing that opens another pod's /metrics.
// Without KUBELAMBDA_AGENT_TOKEN the endpoints are open, as before (a platform without an agent key).
// The tokens are read once and never given to the runtime workers (their environment drops KUBELAMBDA_*);
// the agent also makes itself non-dumpable, so code in the pod cannot read them from /proc/<agent>/environ.

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"net/http"
	"strings"
	"sync"
)

const (
	agentTokenEnv   = "KUBELAMBDA_AGENT_TOKEN"
	metricsTokenEnv = "KUBELAMBDA_AGENT_METRICS_TOKEN_SHA256"
)

type agentAuth struct {
	mu      sync.RWMutex
	token   string
	metrics string // hex SHA-256 of the metrics token
}

func newAgentAuth(lookup func(string) (string, bool)) *agentAuth {
	a := &agentAuth{}
	a.token, _ = lookup(agentTokenEnv)
	metrics, _ := lookup(metricsTokenEnv)
	a.metrics = strings.ToLower(strings.TrimSpace(metrics))
	return a
}

// replace makes “token“ the only one /invoke and /specialize accept (a pool pod after its specialisation).
func (a *agentAuth) replace(token string) {
	if token == "" {
		return
	}
	a.mu.Lock()
	a.token = token
	a.mu.Unlock()
}

// fromGateway tells whether r shows this pod's token (the gateway's calls): false on a platform without an
// agent key, where anyone may call.
func (a *agentAuth) fromGateway(r *http.Request) bool {
	if a == nil {
		return false
	}
	a.mu.RLock()
	token := a.token
	a.mu.RUnlock()
	given, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return token != "" && ok && subtle.ConstantTimeCompare([]byte(given), []byte(token)) == 1
}

func (a *agentAuth) allows(r *http.Request, metrics bool) bool {
	a.mu.RLock()
	token, metricsToken := a.token, a.metrics
	a.mu.RUnlock()
	if token == "" {
		return true // no agent key on this platform
	}
	given, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || given == "" {
		return false
	}
	if subtle.ConstantTimeCompare([]byte(given), []byte(token)) == 1 {
		return true
	}
	if !metrics || metricsToken == "" {
		return false
	}
	sum := sha256.Sum256([]byte(given))
	return subtle.ConstantTimeCompare([]byte(hex.EncodeToString(sum[:])), []byte(metricsToken)) == 1
}

// guard wraps an admin endpoint: 401 without a valid token, before anything else is read.
func (a *agentAuth) guard(h http.Handler, metrics bool) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if !a.allows(r, metrics) {
			rw.Header().Set("WWW-Authenticate", `Bearer realm="kubelambda-agent"`)
			apiError(rw, http.StatusUnauthorized, "UnauthorizedException", "this endpoint needs the pod's agent token")
			return
		}
		h.ServeHTTP(rw, r)
	})
}

func init() {
	// Tokens live in this process's environment: keep other processes of the pod's user out of /proc/<pid>/environ.
	preventDumps()
}
