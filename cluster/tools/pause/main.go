// Command pause holds a pod's namespaces open until the pod is stopped: it waits for SIGINT or
// SIGTERM and exits 0, as the sandbox image Kubernetes ships does.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
}
