package qemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/shoalvm/shoal/internal/qemu/qmp"
)

// ErrNotRunning is wrapped by Attach's error when no QEMU runs for the dir.
var ErrNotRunning = errors.New("qemu not running")

// ErrAlreadyRunning is wrapped by Launch's error when a QEMU already runs
// for the dir.
var ErrAlreadyRunning = errors.New("qemu already running")

// killWait bounds how long Kill waits for the process to disappear.
const killWait = 10 * time.Second

// Process is a running QEMU, launched or attached. Pid and Dir identify it.
// Its methods are safe for concurrent use. Close releases the Process but
// leaves the VM running.
type Process struct {
	Pid int
	Dir string

	log *slog.Logger
	qmp *qmp.Client
	h   *pidHandle
}

// Launch starts QEMU for cfg as a daemon in its own session, so it outlives
// the caller, and returns once QEMU has initialised and QMP is connected.
// cfg.Dir is created if missing and made absolute. With cfg.User, QEMU
// runs as that user, which Launch makes the owner of cfg.Dir (0700). If QEMU fails to start,
// the error holds what QEMU printed, which is also appended to qemu.log.
// Launch refuses (ErrAlreadyRunning) if a QEMU already runs for cfg.Dir.
func Launch(ctx context.Context, log *slog.Logger, binary string, cfg Config) (*Process, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("qemu: launch %s: %w", cfg.Name, err)
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("qemu: launch %s: %w", cfg.Name, err)
	}
	cfg.Dir = dir
	args, err := Args(cfg)
	if err != nil {
		return nil, fmt.Errorf("qemu: launch %s: %w", cfg.Name, err)
	}
	files := make([]*os.File, len(cfg.NICs))
	for i, n := range cfg.NICs {
		if n.TapFD == nil {
			return nil, fmt.Errorf("qemu: launch %s: %w: nic %d has no tap fd", cfg.Name, ErrInvalidConfig, i)
		}
		files[i] = n.TapFD
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("qemu: launch %s: %w", cfg.Name, err)
	}
	// Serialize launches for this dir, across processes too, so two
	// launches cannot both find it free.
	unlock, err := lockDir(ctx, dir)
	if err != nil {
		return nil, fmt.Errorf("qemu: launch %s: %w", cfg.Name, err)
	}
	defer unlock()
	if pid, h, err := findRunning(dir); err == nil {
		h.close()
		return nil, fmt.Errorf("qemu: launch %s: %w: pid %d runs for %s", cfg.Name, ErrAlreadyRunning, pid, dir)
	}
	if pids := findOurQEMUs(dir); len(pids) > 0 {
		return nil, fmt.Errorf("qemu: launch %s: %w: pid %v runs for %s (without a valid pidfile)",
			cfg.Name, ErrAlreadyRunning, pids, dir)
	}
	removeRuntimeFiles(dir)
	rotateLog(dir)
	if err := giveDir(dir, cfg.User); err != nil {
		return nil, fmt.Errorf("qemu: launch %s: %w", cfg.Name, err)
	}

	// QEMU's stderr before it daemonizes goes to an unlinked scratch file;
	// a pipe would be held open by the daemon. Afterwards -D sends its
	// stderr to qemu.log.
	scratch, err := os.CreateTemp(dir, ".launch-*")
	if err != nil {
		return nil, fmt.Errorf("qemu: launch %s: %w", cfg.Name, err)
	}
	os.Remove(scratch.Name())
	defer scratch.Close()

	cmd := exec.Command(binary, args...)
	cmd.Stdout = scratch
	cmd.Stderr = scratch
	cmd.ExtraFiles = files
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Credential: credential(cfg.User)}
	start := time.Now()
	log.Debug("launching qemu", "vm", cfg.Name, "binary", binary, "args", args)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("qemu: launch %s: start %s: %w", cfg.Name, binary, err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	var waitErr error
	select {
	case waitErr = <-waited:
	case <-ctx.Done():
		// The daemon exits by itself when its parent is gone; kill any
		// that got far enough to be found, to be prompt.
		_ = cmd.Process.Kill()
		<-waited
		killStrays(log, dir)
		removeRuntimeFiles(dir)
		return nil, fmt.Errorf("qemu: launch %s: %w", cfg.Name, ctx.Err())
	}
	out := readTail(scratch)
	if waitErr != nil {
		// Depending on how far it got, QEMU reports a startup error on
		// stderr or, once -D took effect, in qemu.log (fresh per launch).
		appendLog(dir, out)
		killStrays(log, dir)
		removeRuntimeFiles(dir)
		if f, err := os.OpenFile(filepath.Join(dir, LogFile), os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0); err == nil {
			out = readTail(f)
			f.Close()
		}
		if out == "" {
			out = "(no output; see " + filepath.Join(dir, LogFile) + ")"
		}
		return nil, fmt.Errorf("qemu: launch %s: %w: %s", cfg.Name, waitErr, out)
	}
	if out != "" {
		log.Warn("qemu printed at launch", "vm", cfg.Name, "output", out)
	}

	p, err := attach(ctx, log, dir)
	if err != nil {
		killStrays(log, dir)
		removeRuntimeFiles(dir)
		return nil, fmt.Errorf("qemu: launch %s: started, then: %w", cfg.Name, err)
	}
	log.Info("qemu launched", "vm", cfg.Name, "pid", p.Pid, "dir", dir, "accel", cfg.Accel,
		"took", time.Since(start).Round(time.Millisecond))
	return p, nil
}

// Attach connects to the QEMU already running for dir: it reads the
// pidfile, checks that the pid really is that QEMU, and connects QMP.
// The error wraps ErrNotRunning if no such QEMU runs.
func Attach(ctx context.Context, log *slog.Logger, dir string) (*Process, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("qemu: attach %s: %w", dir, err)
	}
	p, err := attach(ctx, log, abs)
	if err != nil {
		return nil, fmt.Errorf("qemu: attach: %w", err)
	}
	log.Info("qemu attached", "pid", p.Pid, "dir", abs)
	return p, nil
}

func attach(ctx context.Context, log *slog.Logger, dir string) (*Process, error) {
	pid, h, err := findRunning(dir)
	if err != nil {
		return nil, err
	}
	c, err := qmp.Dial(ctx, filepath.Join(dir, QMPSocket))
	if err != nil {
		select {
		case <-h.exited:
			err = fmt.Errorf("%w: pid %d exited while connecting: %w", ErrNotRunning, pid, err)
		default:
		}
		h.close()
		return nil, err
	}
	return &Process{Pid: pid, Dir: dir, log: log, qmp: c, h: h}, nil
}

// findRunning returns the verified QEMU of dir, or an error wrapping
// ErrNotRunning.
func findRunning(dir string) (int, *pidHandle, error) {
	pidPath := filepath.Join(dir, PidFile)
	raw, err := readPidfile(pidPath)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil, fmt.Errorf("%w: no pidfile %s", ErrNotRunning, pidPath)
	}
	if err != nil {
		return 0, nil, fmt.Errorf("read pidfile: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil || pid <= 0 {
		// Its content is not shown: QEMU's user writes the file.
		return 0, nil, fmt.Errorf("%w: pidfile %s holds no pid", ErrNotRunning, pidPath)
	}
	h, err := openPid(pid, dir)
	if err != nil {
		return 0, nil, err
	}
	return pid, h, nil
}

// QMP returns the QMP client, for commands this package does not wrap.
func (p *Process) QMP() *qmp.Client { return p.qmp }

// Status returns QEMU's run state from query-status: "running", "paused",
// "prelaunch", "shutdown", "inmigrate", "postmigrate", ...
func (p *Process) Status(ctx context.Context) (string, error) {
	var st struct {
		Status string `json:"status"`
	}
	if err := p.qmp.Execute(ctx, "query-status", nil, &st); err != nil {
		return "", fmt.Errorf("qemu %s: status: %w", p.Dir, err)
	}
	return st.Status, nil
}

// Pause stops the guest's CPUs.
func (p *Process) Pause(ctx context.Context) error { return p.simple(ctx, "stop") }

// Resume starts the guest's CPUs.
func (p *Process) Resume(ctx context.Context) error { return p.simple(ctx, "cont") }

// Powerdown asks the guest to shut down (ACPI power button). A guest may
// ignore it; see Stop.
func (p *Process) Powerdown(ctx context.Context) error { return p.simple(ctx, "system_powerdown") }

func (p *Process) simple(ctx context.Context, command string) error {
	if err := p.qmp.Execute(ctx, command, nil, nil); err != nil {
		return fmt.Errorf("qemu %s: %w", p.Dir, err)
	}
	return nil
}

// Exited is closed when the QEMU process has exited. After Close it is no
// longer tracked.
func (p *Process) Exited() <-chan struct{} { return p.h.exited }

// Kill sends SIGKILL to this QEMU (the pid was verified when the Process
// was made, and a pidfd keeps pointing at that very process), waits for it
// to exit, closes the Process, and removes the pidfile and sockets. The
// logs stay. Killing a QEMU that already exited is no error.
func (p *Process) Kill() error {
	select {
	case <-p.h.exited:
		p.Close()
		cleanupAfter(p.Dir, p.Pid)
		return nil
	default:
	}
	if err := p.h.kill(); err != nil {
		return fmt.Errorf("qemu %s: %w", p.Dir, err)
	}
	select {
	case <-p.h.exited:
	case <-time.After(killWait):
		return fmt.Errorf("qemu %s: pid %d still there %s after SIGKILL", p.Dir, p.Pid, killWait)
	}
	p.Close()
	cleanupAfter(p.Dir, p.Pid)
	p.log.Info("qemu killed", "pid", p.Pid, "dir", p.Dir)
	return nil
}

// Stop asks the guest to power down, waits up to timeout for QEMU to exit,
// and kills it if it has not. If ctx ends first, Stop returns ctx's error
// and leaves the VM running. After Stop the Process is closed.
func (p *Process) Stop(ctx context.Context, timeout time.Duration) error {
	if err := p.Powerdown(ctx); err != nil {
		p.log.Warn("qemu powerdown failed; will kill", "pid", p.Pid, "dir", p.Dir, "err", err)
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.h.exited:
		p.Close()
		cleanupAfter(p.Dir, p.Pid)
		p.log.Info("qemu powered down", "pid", p.Pid, "dir", p.Dir)
		return nil
	case <-ctx.Done():
		return fmt.Errorf("qemu %s: stop: %w", p.Dir, ctx.Err())
	case <-t.C:
	}
	p.log.Info("guest ignored powerdown; killing qemu", "pid", p.Pid, "dir", p.Dir, "timeout", timeout)
	return p.Kill()
}

// Close disconnects QMP and stops tracking the process. The VM keeps
// running; Attach finds it again.
func (p *Process) Close() error {
	err := p.qmp.Close()
	p.h.close()
	return err
}

// cleanupAfter removes the runtime files of the exited QEMU pid, unless
// a newer QEMU already took over dir (its pidfile names another pid, or
// one runs there): an old Process must never hide a new VM.
func cleanupAfter(dir string, pid int) {
	raw, err := readPidfile(filepath.Join(dir, PidFile))
	if err == nil && strings.TrimSpace(string(raw)) != strconv.Itoa(pid) {
		return
	}
	for _, other := range findOurQEMUs(dir) {
		if other != pid {
			return
		}
	}
	removeRuntimeFiles(dir)
}

// lockDir takes an exclusive flock on dir/launch.lock, waiting while
// another launch holds it.
func lockDir(ctx context.Context, dir string) (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(dir, LaunchLock), os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, err
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("wait for another launch in %s: %w", dir, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// removeRuntimeFiles removes what only a running QEMU needs; logs stay.
func removeRuntimeFiles(dir string) {
	for _, name := range []string{PidFile, QMPSocket, ConsoleSocket} {
		_ = os.Remove(filepath.Join(dir, name))
	}
}

// rotateLog keeps the previous run's qemu.log as qemu.log.1: QEMU's -D
// truncates the file it opens.
func rotateLog(dir string) {
	p := filepath.Join(dir, LogFile)
	if st, err := os.Stat(p); err == nil && st.Size() > 0 {
		_ = os.Rename(p, p+".1")
	}
}

// readTail returns the last 4 KiB of f, trimmed.
func readTail(f *os.File) string {
	const limit = 4 << 10
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	off := max(st.Size()-limit, 0)
	b, _ := io.ReadAll(io.NewSectionReader(f, off, limit))
	return strings.TrimSpace(string(b))
}

func appendLog(dir, text string) {
	if text == "" {
		return
	}
	f, err := os.OpenFile(filepath.Join(dir, LogFile), os.O_WRONLY|os.O_APPEND|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0o640)
	if err != nil {
		return
	}
	defer f.Close()
	_, _ = f.WriteString(text + "\n")
}

// killStrays kills any QEMU of dir left by a failed or abandoned launch.
func killStrays(log *slog.Logger, dir string) {
	for _, pid := range findOurQEMUs(dir) {
		h, err := openPid(pid, dir)
		if err != nil {
			continue
		}
		if err := h.kill(); err == nil {
			select {
			case <-h.exited:
			case <-time.After(killWait):
			}
			log.Warn("killed qemu left by a failed launch", "pid", pid, "dir", dir)
		}
		h.close()
	}
}

// KillAll kills every QEMU running for dir and waits for each to exit. It
// needs neither QMP nor the pidfile, so it works on a wedged QEMU or one
// whose pidfile is gone.
func KillAll(log *slog.Logger, dir string) { killStrays(log, dir) }

// readPidfile reads QEMU's pidfile, which its unprivileged user writes in
// a dir of its own: through no link, no FIFO, and 32 bytes at most.
func readPidfile(path string) ([]byte, error) {
	f, err := openOwn(path, os.O_RDONLY)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, 32)
	n, err := f.Read(b)
	if err != nil && n == 0 {
		return nil, err
	}
	return b[:n], nil
}
