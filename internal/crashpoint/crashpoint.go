// Package crashpoint lets tests kill the process at a named point, to
// prove that every step is safe to resume after a crash. It is inert
// unless SHOAL_CRASHPOINT names the point.
package crashpoint

import (
	"os"
	"syscall"
)

// Env is the variable that arms a crash point.
const Env = "SHOAL_CRASHPOINT"

var armed = os.Getenv(Env)

// Hit kills the process with SIGKILL, as a power cut would, if name is the
// armed crash point.
func Hit(name string) {
	if armed != "" && armed == name {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // never returns
	}
}
