package agent

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/shoalvm/shoal/internal/fencewd"
	"github.com/shoalvm/shoal/internal/qemu"
)

// fenceTick is how often the watchdog looks at the lease.
const fenceTick = 100 * time.Millisecond

// fence is the agent's watchdog. A host that could not renew its liveness
// lease for FenceTimeout kills its HA VMs itself, because from then on
// the control plane may restart them on another host (internal/ha has
// the timing argument). It measures on the monotonic clock, from the
// moment the last renewal that succeeded was sent.
//
// After fencing, the host starts none of its HA VMs again until it has
// renewed its lease and then read a fresh snapshot of its VMs: a VM given
// to another host meanwhile is then no longer in it, and the control
// plane gives a VM away only while the host's lease is gone.
type fence struct {
	mu      sync.Mutex
	timeout time.Duration
	renewed time.Time // when the last renewal that succeeded was sent
	fenced  bool      // the HA VMs were killed
	since   time.Time
	liftGen int                // a snapshot of this stream or later lifts the fence (0 = not yet renewed)
	gen     int                // of the current VM stream
	cancel  context.CancelFunc // of the current VM stream
}

// renewedAt records a renewal that succeeded, sent at sent. After a
// fence it ends the current VM stream, so that the next one brings a
// snapshot read after the renewal.
func (f *fence) renewedAt(sent time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if sent.After(f.renewed) {
		f.renewed = sent
	}
	if f.fenced && f.liftGen == 0 {
		f.liftGen = f.gen + 1
		if f.cancel != nil {
			f.cancel()
		}
	}
}

// stream records a new VM stream; it returns its generation.
func (f *fence) stream(cancel context.CancelFunc) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gen++
	f.cancel = cancel
	return f.gen
}

// snapshot is called with each snapshot of stream gen, before it is
// handed out; it lifts the fence when the snapshot is recent enough.
func (f *fence) snapshot(gen int) (lifted bool, after time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.fenced || f.liftGen == 0 || gen < f.liftGen {
		return false, 0
	}
	f.fenced, f.liftGen = false, 0
	return true, time.Since(f.since)
}

// due reports whether the host must fence now (and notes that it did).
func (f *fence) due() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fenced || f.renewed.IsZero() || time.Since(f.renewed) < f.timeout {
		return false
	}
	f.fenced, f.since, f.liftGen = true, time.Now(), 0
	return true
}

// holds reports whether the fence is up.
func (f *fence) holds() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.fenced
}

// watchdog fences the host when its lease lapses.
func (a *Agent) watchdog(ctx context.Context) {
	t := time.NewTicker(fenceTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !a.fence.due() {
			continue
		}
		a.log.Error("could not renew this host's lease: killing its HA VMs, which the control plane may now restart elsewhere",
			"fence_timeout", a.fence.timeout)
		for id, name := range a.haVMs() {
			qemu.KillAll(a.log, a.vmDir(id))
			a.log.Warn("fenced HA vm", "vm", name, "vm_id", id)
		}
		a.mu.Lock()
		for _, w := range a.vms {
			w.poke()
		}
		a.mu.Unlock()
	}
}

// haVMs lists the HA VMs this host owns, by id.
func (a *Agent) haVMs() map[string]string {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[string]string{}
	for id, w := range a.vms {
		if s := w.latest(); s != nil && s.HA && s.Host == a.cfg.Host {
			out[id] = s.Name
		}
	}
	return out
}

// renewed records a renewal that succeeded, sent at sent (mono on the
// watchdog's clock), and moves the fence watchdog's deadline on.
func (a *Agent) renewed(sent time.Time, mono time.Duration) {
	a.fence.renewedAt(sent)
	if a.cfg.Watchdog == nil {
		return
	}
	if err := fencewd.Arm(a.cfg.Dir, mono+a.cfg.FenceTimeout); err != nil {
		a.log.Warn("cannot arm the fence watchdog", "err", err)
	}
}

// startWatchdog starts the fence watchdog unless one runs for this dir.
// It runs apart from the agent (its own session) and outlives it.
func (a *Agent) startWatchdog() error {
	if a.cfg.Watchdog == nil {
		return nil
	}
	if pid, ok := fencewd.Running(a.cfg.Dir); ok {
		a.log.Debug("fence watchdog already running", "pid", pid)
		return nil
	}
	logPath := filepath.Join(a.cfg.Dir, "fence", "watchdog.log")
	if err := os.MkdirAll(filepath.Dir(logPath), 0o750); err != nil {
		return fmt.Errorf("fence dir: %w", err)
	}
	out, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("watchdog log: %w", err)
	}
	defer out.Close()
	cmd := exec.Command(a.cfg.Watchdog[0], a.cfg.Watchdog[1:]...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start the fence watchdog: %w", err)
	}
	a.log.Info("fence watchdog started", "pid", cmd.Process.Pid, "log", logPath)
	go func() { _ = cmd.Wait() }() // reap it if it ends while we live
	return nil
}

// markHA keeps the watchdog's HA marker of an owned VM current.
func (w *worker) markHA(ha bool) {
	if w.a.cfg.Watchdog == nil {
		return
	}
	if err := fencewd.MarkHA(w.a.vmDir(w.id), ha); err != nil {
		w.log.Warn("HA marker", "err", err)
	}
}
