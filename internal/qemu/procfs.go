package qemu

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// pollInterval is how often liveness is polled where pidfds are missing.
const pollInterval = 200 * time.Millisecond

// usePidfd is false only in tests of the /proc polling fallback.
var usePidfd = true

// isOurQEMU reports whether pid is a QEMU whose QMP socket is dir's
// qmp.sock, judged from /proc/<pid>/cmdline; why explains a "no".
func isOurQEMU(pid int, dir string) (ok bool, why string) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false, "is gone"
	}
	args := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
	if len(args) == 0 || args[0] == "" {
		return false, fmt.Sprintf("has exited (empty cmdline %q)", raw)
	}
	if !strings.Contains(filepath.Base(args[0]), "qemu") {
		return false, fmt.Sprintf("is %q, not a QEMU", args[0])
	}
	needle := "path=" + escapeOpt(filepath.Join(dir, QMPSocket))
	for _, a := range args[1:] {
		if strings.HasSuffix(a, needle) || strings.Contains(a, needle+",") {
			return true, ""
		}
	}
	return false, fmt.Sprintf("is a QEMU, but not the one for %s", dir)
}

// procStat returns the state letter and start time (clock ticks after
// boot) of pid from /proc/<pid>/stat.
func procStat(pid int) (state byte, start uint64, err error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	// The command name (field 2) may hold spaces and parentheses; the
	// fields after the last ')' are plain.
	i := bytes.LastIndexByte(raw, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(string(raw[i+1:]))
	if len(f) < 20 {
		return 0, 0, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(f))
	}
	start, err = strconv.ParseUint(f[19], 10, 64) // field 22
	if err != nil {
		return 0, 0, fmt.Errorf("parse /proc/%d/stat start time: %w", pid, err)
	}
	return f[0][0], start, nil
}

// findOurQEMUs scans /proc for QEMUs whose QMP socket is dir's.
func findOurQEMUs(dir string) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ok, _ := isOurQEMU(pid, dir); ok {
			pids = append(pids, pid)
		}
	}
	return pids
}

// pidHandle follows one verified QEMU process for its whole life. With a
// pidfd it cannot be confused by pid reuse; without one (old kernels) it
// compares the start time recorded when it was opened.
type pidHandle struct {
	pid    int
	dir    string
	pidfd  *os.File // nil when pidfds are unavailable
	start  uint64
	exited chan struct{}

	stopOnce sync.Once
	stop     chan struct{}
	done     chan struct{} // closed when the watcher has returned
}

// openPid opens pid and checks it is the QEMU of dir. Errors wrap
// ErrNotRunning when it is not (or no longer) that QEMU.
func openPid(pid int, dir string) (*pidHandle, error) {
	h := &pidHandle{
		pid:    pid,
		dir:    dir,
		exited: make(chan struct{}),
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	fd, err := -1, error(unix.ENOSYS)
	if usePidfd {
		fd, err = unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	}
	switch {
	case err == nil:
		h.pidfd = os.NewFile(uintptr(fd), fmt.Sprintf("pidfd:%d", pid))
	case errors.Is(err, unix.ESRCH):
		return nil, fmt.Errorf("%w: pid %d is gone", ErrNotRunning, pid)
	default:
		// No pidfds (kernel < 5.10): fall back to /proc polling.
	}
	// Verify identity only after the pidfd pins the process: if the pid was
	// reused in between, the check sees the new process and says no.
	if ok, why := isOurQEMU(pid, dir); !ok {
		h.closeFD()
		return nil, fmt.Errorf("%w: pid %d %s", ErrNotRunning, pid, why)
	}
	state, start, err := procStat(pid)
	if err != nil || state == 'Z' {
		h.closeFD()
		return nil, fmt.Errorf("%w: pid %d has exited", ErrNotRunning, pid)
	}
	h.start = start
	go h.watch()
	return h, nil
}

func (h *pidHandle) closeFD() {
	if h.pidfd != nil {
		h.pidfd.Close()
	}
}

// alive reports whether the process opened is still running (not a zombie).
func (h *pidHandle) alive() bool {
	state, start, err := procStat(h.pid)
	return err == nil && start == h.start && state != 'Z'
}

func (h *pidHandle) watch() {
	defer close(h.done)
	if h.pidfd != nil {
		rc, err := h.pidfd.SyscallConn()
		if err == nil {
			err = rc.Read(func(fd uintptr) bool {
				fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
				n, err := unix.Poll(fds, 0)
				return err == nil && n > 0
			})
			if err == nil {
				h.reap()
				close(h.exited)
				return
			}
		}
		select {
		case <-h.stop:
			return
		default:
			// The pidfd is not pollable here; fall back to polling.
		}
	}
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-t.C:
			if !h.alive() {
				h.reap()
				close(h.exited)
				return
			}
		}
	}
}

// reap collects the exit status if the QEMU is our child (it is when the
// caller made itself a child subreaper, as container shims do); otherwise
// its parent (normally init) does.
func (h *pidHandle) reap() {
	var info unix.Siginfo
	if h.pidfd != nil {
		rc, err := h.pidfd.SyscallConn()
		if err == nil {
			_ = rc.Control(func(fd uintptr) {
				_ = unix.Waitid(unix.P_PIDFD, int(fd), &info, unix.WEXITED|unix.WNOHANG, nil)
			})
			return
		}
	}
	if state, start, err := procStat(h.pid); err == nil && state == 'Z' && start == h.start {
		_ = unix.Waitid(unix.P_PID, h.pid, &info, unix.WEXITED|unix.WNOHANG, nil)
	}
}

// kill sends SIGKILL to the process; a process already gone is no error.
func (h *pidHandle) kill() error {
	select {
	case <-h.exited:
		return nil
	case <-h.stop:
		return fmt.Errorf("kill pid %d: handle closed; attach again", h.pid)
	default:
	}
	if h.pidfd != nil {
		rc, err := h.pidfd.SyscallConn()
		if err != nil {
			return fmt.Errorf("kill pid %d: %w", h.pid, err)
		}
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = unix.PidfdSendSignal(int(fd), unix.SIGKILL, nil, 0)
		}); err != nil {
			return fmt.Errorf("kill pid %d: %w", h.pid, err)
		}
		if serr != nil && !errors.Is(serr, unix.ESRCH) {
			return fmt.Errorf("kill pid %d: %w", h.pid, serr)
		}
		return nil
	}
	// Without a pidfd: re-check identity right before signalling.
	if !h.alive() {
		return nil
	}
	if ok, why := isOurQEMU(h.pid, h.dir); !ok {
		return fmt.Errorf("refusing to kill pid %d: it %s", h.pid, why)
	}
	if err := syscall.Kill(h.pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill pid %d: %w", h.pid, err)
	}
	return nil
}

// close stops watching and releases the pidfd. Exited is not closed
// afterwards unless it already was.
func (h *pidHandle) close() {
	h.stopOnce.Do(func() {
		close(h.stop)
		h.closeFD()
		<-h.done
	})
}
