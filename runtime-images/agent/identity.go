package main

// Guards of a warm-pool pod's one specialisation (docs/warm-pools.md, "Isolation"), beyond the in-memory
// "one /specialize per agent":
//
//   - The request names the runtime and the pod it is meant for. The gateway's view of pod addresses lags the
//     cluster: an address freed by a deleted pod may be handed to a new pod at once (the local node reuses
//     released addresses first), so a /specialize meant for a Python pool pod may reach a Node.js one now
//     holding that address. A pod that is not the one named refuses (421) and stays generic.
//   - A generic agent that finds code in its task root (an emptyDir, which outlives the container) started
//     after a specialisation: its container restarted. It refuses every /specialize and is never ready, so the
//     pod is never handed to another function. (The gateway also never claims a pod whose container restarted:
//     the kubelet's restart count is state no code in the pod can reset.)

import (
	"fmt"
	"net/http"
	"os"
)

const podUIDEnv = "KUBELAMBDA_POD_UID" // the pod's uid (downward API), set on pool pods

// misdirected says why this pod is not the one “req“ names ("" when it is, or when it names none).
func (s *specializer) misdirected(req *specializeRequest) string {
	if req.Runtime != "" && req.Runtime != s.cfg.RuntimeName {
		return fmt.Sprintf("this pod runs %s, not %s (a stale pod address?)", s.cfg.RuntimeName, req.Runtime)
	}
	if own := os.Getenv(podUIDEnv); req.PodUID != "" && own != "" && own != req.PodUID {
		return fmt.Sprintf("this pod is %s, not %s (a stale pod address?)", own, req.PodUID)
	}
	return ""
}

// taskRootUsed reports whether “dir“ holds anything: a generic agent's task root is empty until specialised.
func taskRootUsed(dir string) bool {
	entries, err := os.ReadDir(dir)
	return err == nil && len(entries) > 0
}

// consumed reports whether this generic pod may never be specialised (its container restarted after a
// specialisation); such a pod is never ready.
func (s *specializer) consumed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status.State == "consumed"
}

func refuseMisdirected(rw http.ResponseWriter, why string) {
	apiError(rw, http.StatusMisdirectedRequest, "MisdirectedRequest", why)
}
