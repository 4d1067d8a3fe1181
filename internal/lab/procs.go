package lab

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The lab never kills by name. A process is the lab's only if its command
// line mentions the lab's directory as a path (recorded pids, QEMU), or if
// it runs in a namespace the lab made (checked by inode). Each candidate is
// pinned with a pidfd before it is checked, so a reused pid can never be
// signalled by mistake.

// labEnv is the environment of the lab's processes and CLI calls: the
// caller's, with the CLI settings pointing at the lab.
func labEnv(l Layout) []string {
	var env []string
	for _, e := range os.Environ() {
		k, _, _ := strings.Cut(e, "=")
		if k == "SHOAL_SERVER" || k == "SHOAL_TOKEN" || k == "SHOAL_CONFIG" {
			continue
		}
		env = append(env, e)
	}
	return append(env, "SHOAL_CONFIG="+l.Config())
}

// startDetached starts argv inside namespace ns ('ip netns exec' execs, so
// the pid is argv's), in its own session, with stdout and stderr appended
// to logPath. A goroutine reaps it if it ends while this process lives.
func startDetached(ns string, argv []string, logPath string, env []string) (int, error) {
	if len(argv) == 0 {
		return 0, errors.New("empty command line")
	}
	f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return 0, fmt.Errorf("log file: %w", err)
	}
	defer f.Close()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = env
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start %s in %s: %w", argv[0], ns, err)
	}
	go func() { _ = cmd.Wait() }()
	pid := cmd.Process.Pid
	// Wait (briefly) for ip to exec argv, so that what runs under pid is
	// argv, inside ns. (An empty cmdline is an exec in progress: ip's own.)
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if a := cmdline(pid); len(a) > 0 && !slices.Equal(a, cmd.Args) || !alive(pid) {
			break
		}
	}
	return pid, nil
}

// cmdline returns the argv of pid (nil if it is gone or a kernel thread).
func cmdline(pid int) []string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil || len(b) == 0 {
		return nil
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
}

// alive tells whether pid runs (exists and is not a zombie).
func alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return false
	}
	st := b[i+2]
	return st != 'Z' && st != 'X'
}

// mentions tells whether an argument of argv holds path as a whole path:
// "/lab" is in "--data-dir /lab/host1" and "shared=/lab/shared", not in
// "/lab2".
func mentions(argv []string, path string) bool {
	path = strings.TrimRight(path, "/")
	if path == "" {
		return false
	}
	for _, a := range argv {
		for from := 0; ; {
			i := strings.Index(a[from:], path)
			if i < 0 {
				break
			}
			end := from + i + len(path)
			if end == len(a) || !isNameByte(a[end]) {
				return true
			}
			from += i + 1
		}
	}
	return false
}

func isNameByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
}

// isQEMU tells whether argv is a QEMU system emulator.
func isQEMU(argv []string) bool {
	return len(argv) > 0 && strings.HasPrefix(filepath.Base(argv[0]), "qemu-system")
}

// pidNetns returns the device and inode of pid's network namespace.
func pidNetns(pid int) (dev, ino uint64, ok bool) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/"+strconv.Itoa(pid)+"/ns/net", &st); err != nil {
		return 0, 0, false
	}
	return st.Dev, st.Ino, true
}

// procInfo is what a matcher sees of a process.
type procInfo struct {
	pid      int
	argv     []string
	dev, ino uint64 // its network namespace
}

// matcher says why a process belongs to the lab, or "" if it does not.
type matcher func(p procInfo) string

// victim is a process pinned by a pidfd.
type victim struct {
	pid int
	fd  int
	why string
}

// find pins every process that match claims, except this process and its
// parent. The caller closes the victims with release.
func find(match matcher) []victim {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self, parent := os.Getpid(), os.Getppid()
	var vs []victim
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self || pid == parent {
			continue
		}
		fd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			continue // gone
		}
		// Checked after pinning: if pid was reused since, this reads the
		// new process, which is the one the pidfd signals.
		info := procInfo{pid: pid, argv: cmdline(pid)}
		info.dev, info.ino, _ = pidNetns(pid)
		if why := match(info); why != "" && alive(pid) {
			vs = append(vs, victim{pid: pid, fd: fd, why: why})
			continue
		}
		unix.Close(fd)
	}
	return vs
}

func release(vs []victim) {
	for _, v := range vs {
		unix.Close(v.fd)
	}
}

// signal sends sig to every victim.
func signal(vs []victim, sig unix.Signal) {
	for _, v := range vs {
		_ = unix.PidfdSendSignal(v.fd, sig, nil, 0)
	}
}

// waitGone waits until every victim has ended or d has passed, and returns
// those still running.
func waitGone(vs []victim, d time.Duration) []victim {
	deadline := time.Now().Add(d)
	for {
		var left []victim
		for _, v := range vs {
			pfd := []unix.PollFd{{Fd: int32(v.fd), Events: unix.POLLIN}}
			if n, err := unix.Poll(pfd, 0); err == nil && n > 0 {
				continue // exited (a pidfd is readable once its process ends)
			}
			left = append(left, v)
		}
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		vs = left
		time.Sleep(20 * time.Millisecond)
	}
}

// terminate ends the victims: SIGTERM, then SIGKILL to those still running
// after grace (grace 0: SIGKILL at once). It returns an error naming those
// that survive even SIGKILL.
func terminate(log *slog.Logger, vs []victim, grace time.Duration) error {
	if len(vs) == 0 {
		return nil
	}
	for _, v := range vs {
		log.Debug("lab: stopping process", "pid", v.pid, "why", v.why)
	}
	left := vs
	if grace > 0 {
		signal(left, unix.SIGTERM)
		left = waitGone(left, grace)
	}
	if len(left) > 0 {
		signal(left, unix.SIGKILL)
		left = waitGone(left, 5*time.Second)
	}
	if len(left) > 0 {
		var names []string
		for _, v := range left {
			names = append(names, fmt.Sprintf("%d (%s)", v.pid, v.why))
		}
		return fmt.Errorf("processes still running after SIGKILL: %s: check them with ps and end them by hand", strings.Join(names, ", "))
	}
	return nil
}

// logTail returns the last non-empty line of a log file, to put in errors.
func logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}
