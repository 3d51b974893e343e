// Command edgetune-pause is the process of a Pod sandbox ("pause" container): it holds the
// Pod's namespaces, reaps orphaned children (it is PID 1 when the Pod shares its process
// namespace) and exits on SIGINT/SIGTERM. The local cluster builds its sandbox image from it,
// since registry.k8s.io/pause cannot be pulled here. Standard library only.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s == syscall.SIGCHLD {
			for {
				var ws syscall.WaitStatus
				pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
			continue
		}
		os.Exit(0)
	}
}
