package san

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// DaemonConfig says how to run one tgtd.
type DaemonConfig struct {
	// Listen is the iSCSI portal, IP:port ("[::1]:3260" for IPv6).
	Listen string
	// RunDir holds the management socket (RunDir/tgtd.sock.<port>), its
	// lock file and a pidfile. One tgtd per RunDir and ControlPort; the
	// socket's path must stay under 108 bytes.
	RunDir string
	// ControlPort is tgtd's -C: a number that names the socket beside
	// RunDir's, so that two tgtds may even share a RunDir. 0 by default.
	ControlPort int
	// Wrap, if set, is put before tgtd's command line (tests run tgtd in
	// a network namespace with "ip netns exec NS"; it must exec tgtd in
	// place, so that the pid stays tgtd's).
	Wrap []string
	Log  *slog.Logger
}

// Daemon is a tgtd run by this process, in the foreground, as its child.
// It dies with this process (SIGKILL at the parent's death): tgtd keeps
// its configuration in memory only, and the storage server rebuilds it
// at its next start (SAN.Rebuild).
type Daemon struct {
	cfg  DaemonConfig
	adm  admin
	pid  int
	done chan struct{} // closed when tgtd has exited and was reaped
	err  error         // its exit status, once done
	tail *tailBuf      // its last lines of output, for errors
}

// StartDaemon starts tgtd and returns once it answers on its management
// socket and listens on cfg.Listen (and on nothing else: tgtd falls back
// to every address on port 3260 when it cannot bind the portal it was
// given, which StartDaemon treats as a failure). A tgtd left running
// from an earlier life of this RunDir (its pidfile names a tgtd with the
// same socket) is killed first.
func StartDaemon(ctx context.Context, cfg DaemonConfig) (*Daemon, error) {
	if cfg.Log == nil {
		return nil, errors.New("san: DaemonConfig.Log is required")
	}
	host, port, err := net.SplitHostPort(cfg.Listen)
	if err != nil || net.ParseIP(host) == nil {
		return nil, fmt.Errorf("san: listen address %q is not IP:port", cfg.Listen)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return nil, fmt.Errorf("san: listen address %q has no valid port", cfg.Listen)
	}
	if cfg.ControlPort < 0 || cfg.ControlPort > 32767 {
		return nil, fmt.Errorf("san: control port %d out of range", cfg.ControlPort)
	}
	if err := os.MkdirAll(cfg.RunDir, 0o700); err != nil {
		return nil, fmt.Errorf("san: run dir: %w", err)
	}
	base := filepath.Join(cfg.RunDir, "tgtd.sock")
	sock := fmt.Sprintf("%s.%d", base, cfg.ControlPort)
	if len(sock) > 107 {
		return nil, fmt.Errorf("san: management socket path %s is over 107 bytes; use a shorter run dir", sock)
	}
	pidfile := fmt.Sprintf("%s.%d.pid", base, cfg.ControlPort)
	killStale(pidfile, base, cfg.Log)

	argv := append(slices.Clone(cfg.Wrap), "tgtd", "-f", "-C", strconv.Itoa(cfg.ControlPort),
		"--iscsi", "portal="+cfg.Listen)
	d := &Daemon{cfg: cfg, adm: admin{socket: sock}, done: make(chan struct{}), tail: &tailBuf{}}
	started := make(chan error, 1)
	go d.run(argv, base, started)
	if err := <-started; err != nil {
		return nil, fmt.Errorf("san: start tgtd: %w", err)
	}
	if err := d.waitReady(ctx); err != nil {
		d.kill()
		return nil, err
	}
	if err := os.WriteFile(pidfile, []byte(strconv.Itoa(d.pid)+"\n"), 0o600); err != nil {
		d.kill()
		return nil, fmt.Errorf("san: tgtd pidfile: %w", err)
	}
	cfg.Log.Info("tgtd ready", "pid", d.pid, "portal", cfg.Listen, "socket", sock)
	return d, nil
}

// run starts tgtd on a thread of its own, locked, and waits for it there:
// the parent-death signal follows the thread that forked, so that thread
// must live as long as tgtd.
func (d *Daemon) run(argv []string, ipcBase string, started chan<- error) {
	runtime.LockOSThread() // never unlocked: the thread ends with tgtd's wait
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "TGT_IPC_SOCKET=" + ipcBase}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err == nil {
		cmd.Stderr = cmd.Stdout
		err = cmd.Start()
	}
	if err != nil {
		d.err = err
		close(d.done)
		started <- err
		return
	}
	d.pid = cmd.Process.Pid
	started <- nil
	logged := make(chan struct{})
	go func() {
		defer close(logged)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			d.tail.add(sc.Text())
			d.cfg.Log.Debug("tgtd", "pid", d.pid, "line", sc.Text())
		}
		_, _ = io.Copy(io.Discard, out)
	}()
	<-logged
	d.err = cmd.Wait()
	d.cfg.Log.Info("tgtd exited", "pid", d.pid, "status", d.err)
	close(d.done)
}

// waitReady polls tgtd until it answers and shows exactly its portal.
func (d *Daemon) waitReady(ctx context.Context) error {
	want, _ := netipPortal(d.cfg.Listen)
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	for {
		text, err := d.adm.do(ctx, request{Mode: modePortal, Op: opShow, TID: -1})
		if err == nil {
			got := parsePortals(text)
			if len(got) == 1 && got[0] == want {
				return nil
			}
			return fmt.Errorf("san: tgtd could not listen on %s (it listens on %v): %s",
				d.cfg.Listen, got, d.tail.String())
		}
		select {
		case <-d.done:
			return fmt.Errorf("san: tgtd exited at start (%v): %s", d.err, d.tail.String())
		case <-ctx.Done():
			return fmt.Errorf("san: tgtd not ready: %w (last: %v): %s", ctx.Err(), err, d.tail.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// netipPortal writes addr as tgtd shows a portal: IPv4 as is, IPv6 in
// brackets, both in their canonical form.
func netipPortal(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return "", fmt.Errorf("not an IP: %q", host)
	}
	return net.JoinHostPort(ip.String(), port), nil
}

// Pid is tgtd's process id.
func (d *Daemon) Pid() int { return d.pid }

// Done is closed when tgtd has exited.
func (d *Daemon) Done() <-chan struct{} { return d.done }

// Stop ends tgtd cleanly: every target is deleted (their sessions end)
// and tgtd is told to exit; it is killed if it has not within 5 s or
// ctx's end.
func (d *Daemon) Stop(ctx context.Context) error {
	select {
	case <-d.done:
		return nil
	default:
	}
	if text, err := d.adm.do(ctx, request{Mode: modeTarget, Op: opShow, TID: -1}); err == nil {
		if ts, err := parseTargets(text); err == nil {
			for _, t := range ts {
				_, _ = d.adm.do(ctx, request{Mode: modeTarget, Op: opDelete, TID: int32(t.TID), Force: true})
			}
		}
	}
	_, _ = d.adm.do(ctx, request{Mode: modeSystem, Op: opDelete, TID: -1})
	select {
	case <-d.done:
	case <-time.After(5 * time.Second):
		d.kill()
	case <-ctx.Done():
		d.kill()
	}
	<-d.done
	_ = os.Remove(d.adm.socket + ".pid")
	return nil
}

// kill ends tgtd at once (SIGKILL, by pid) and waits for it.
func (d *Daemon) kill() {
	select {
	case <-d.done:
		return
	default:
	}
	_ = syscall.Kill(d.pid, syscall.SIGKILL)
	<-d.done
}

// killStale kills the tgtd that pidfile names if it is still running
// with this socket and has lost its parent: one started by an earlier
// life of this process that outlived it (its parent-death signal lost).
// Anything else is left alone (a tgtd of a live process keeps its lock,
// and the new one then fails to start, saying so).
func killStale(pidfile, ipcBase string, log *slog.Logger) {
	b, err := os.ReadFile(pidfile)
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return
	}
	comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if strings.TrimSpace(string(comm)) != "tgtd" || parentPid(pid) != 1 ||
		!slices.Contains(strings.Split(string(env), "\x00"), "TGT_IPC_SOCKET="+ipcBase) {
		return
	}
	log.Warn("killing a tgtd left from an earlier run", "pid", pid)
	_ = syscall.Kill(pid, syscall.SIGKILL)
	for i := 0; i < 100; i++ {
		if err := syscall.Kill(pid, 0); err != nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// parentPid is the parent of pid as /proc/PID/stat says, or 0.
func parentPid(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// pid (comm) state ppid ...; comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

// tailBuf keeps the last lines of tgtd's output.
type tailBuf struct {
	mu    sync.Mutex
	lines []string
}

func (t *tailBuf) add(s string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.lines) == 20 {
		t.lines = t.lines[1:]
	}
	t.lines = append(t.lines, s)
}

func (t *tailBuf) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.Join(t.lines, "; ")
}
