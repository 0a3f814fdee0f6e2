// Command pause is the pod sandbox's process. It holds the pod's namespaces, sleeps until it is told to
// stop (TERM or INT, then exits 0) and reaps the children that end up under it: when the pod shares its
// process namespace it is PID 1, and an unreaped orphan would stay a zombie for the pod's lifetime.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 16)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	// Children that exited before the handler was in place sent their SIGCHLD to no one.
	reap()
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		reap()
	}
}

// reap collects every child that has exited; signals coalesce, so one SIGCHLD may stand for several.
func reap() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			return
		}
	}
}
