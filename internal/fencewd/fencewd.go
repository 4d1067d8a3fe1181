// Package fencewd is the host's fence watchdog: a small process apart
// from the agent that kills the host's HA VMs when the agent stops
// renewing the host's lease, whether the host is cut off or the agent
// itself is gone. (The agent fences too, while it lives; this covers its
// death.) The agent arms it after each renewal that succeeded by writing
// a deadline on the monotonic clock; the VMs to kill are those whose
// state dir holds an HA marker.
//
// Files, in the agent's state dir:
//
//	fence/deadline    "<boot id> <CLOCK_MONOTONIC ns>": fence after this
//	fence/watchdog.pid the watchdog's pid
//	vms/<id>/ha       marker: the VM is HA, kill it when fencing
//
// A deadline of another boot counts as passed.
package fencewd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shoalvm/shoal/internal/qemu"
)

// Tick is how often the watchdog looks at its deadline.
const Tick = 100 * time.Millisecond

// Now reads the monotonic clock that deadlines use (shared by every
// process of the machine, unlike Go's own monotonic readings).
func Now() time.Duration {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return time.Duration(ts.Nano())
}

func bootID() string {
	b, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(string(b))
}

func deadlinePath(dir string) string { return filepath.Join(dir, "fence", "deadline") }

// PidPath is where the watchdog of agent state dir dir records its pid.
func PidPath(dir string) string { return filepath.Join(dir, "fence", "watchdog.pid") }

// Arm sets the deadline of agent state dir dir to at (on Now's clock).
func Arm(dir string, at time.Duration) error {
	p := deadlinePath(dir)
	if err := os.MkdirAll(filepath.Dir(p), 0o750); err != nil {
		return fmt.Errorf("fence dir: %w", err)
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, []byte(fmt.Sprintf("%s %d\n", bootID(), int64(at))), 0o640); err != nil {
		return fmt.Errorf("arm fence: %w", err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return fmt.Errorf("arm fence: %w", err)
	}
	return nil
}

// deadline reads the deadline; ok is false when none was ever armed.
func deadline(dir string) (at time.Duration, ok bool) {
	b, err := os.ReadFile(deadlinePath(dir))
	if err != nil {
		return 0, false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 || f[0] != bootID() {
		return 0, true // another boot's: passed
	}
	n, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return 0, true
	}
	return time.Duration(n), true
}

// MarkHA records whether the VM of state dir vmDir (DIR/vms/ID) is HA,
// in DIR/ha/ID: not in the VM's dir, which belongs to its QEMU user, who
// could otherwise remove the mark and so escape fencing.
func MarkHA(vmDir string, ha bool) error {
	marks := filepath.Join(filepath.Dir(filepath.Dir(vmDir)), "ha")
	p := filepath.Join(marks, filepath.Base(vmDir))
	_ = os.Remove(filepath.Join(vmDir, "ha")) // where marks were kept before
	if !ha {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("unmark HA: %w", err)
		}
		return nil
	}
	if err := os.MkdirAll(marks, 0o700); err != nil {
		return fmt.Errorf("mark HA: %w", err)
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("mark HA: %w", err)
	}
	return f.Close()
}

// Run watches agent state dir dir until ctx ends or the dir is removed:
// whenever its deadline has passed, it kills every HA VM's QEMU.
func Run(ctx context.Context, log *slog.Logger, dir string) error {
	if err := os.MkdirAll(filepath.Dir(PidPath(dir)), 0o750); err != nil {
		return fmt.Errorf("fence dir: %w", err)
	}
	if err := os.WriteFile(PidPath(dir), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o640); err != nil {
		return fmt.Errorf("write pidfile: %w", err)
	}
	log.Info("fence watchdog running", "dir", dir)
	t := time.NewTicker(Tick)
	defer t.Stop()
	fenced := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
			log.Info("the agent's state dir is gone; the watchdog ends", "dir", dir)
			return nil
		}
		at, armed := deadline(dir)
		if !armed || Now() < at {
			if fenced {
				log.Info("the agent renewed the lease again; fence lifted")
			}
			fenced = false
			continue
		}
		killed := killHA(log, dir)
		if !fenced || killed > 0 {
			log.Warn("the agent has not renewed the host's lease in time: HA VMs killed", "killed", killed)
		}
		fenced = true
	}
}

// killHA kills the QEMU of each VM marked HA; it returns how many had a
// pidfile (ran, as far as their files tell).
func killHA(log *slog.Logger, dir string) int {
	marks, _ := filepath.Glob(filepath.Join(dir, "ha", "*"))
	old, _ := filepath.Glob(filepath.Join(dir, "vms", "*", "ha")) // marked before DIR/ha
	for _, m := range old {
		marks = append(marks, filepath.Dir(m))
	}
	n := 0
	for _, m := range marks {
		vmDir := filepath.Join(dir, "vms", filepath.Base(m))
		if _, err := os.Stat(filepath.Join(vmDir, qemu.PidFile)); err == nil {
			n++
		}
		qemu.KillAll(log, vmDir) // by /proc, pidfile or not
	}
	return n
}

// Running reports the pid of the watchdog of dir, if one runs.
func Running(dir string) (int, bool) {
	b, err := os.ReadFile(PidPath(dir))
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return 0, false
	}
	argv := strings.Split(strings.TrimRight(string(cmd), "\x00"), "\x00")
	for i, a := range argv {
		if a == "--dir" && i+1 < len(argv) && argv[i+1] == dir && strings.Contains(strings.Join(argv, " "), "fence-watchdog") {
			return pid, true
		}
	}
	return 0, false
}
