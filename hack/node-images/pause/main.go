// The pod sandbox's process for the container node's containerd (sandbox_image): it holds the pod's
// namespaces, reaps the zombies of the pod's processes (it is PID 1 of the pod when the PID namespace is shared)
// and exits on SIGINT or SIGTERM. No registry is reachable here, so the node builds its own.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
