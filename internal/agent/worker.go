package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/qemu"
)

// worker converges one VM. Every step is safe to repeat after a crash:
// it looks at what exists (files, the QEMU process) before acting.
type worker struct {
	a    *Agent
	id   string
	log  *slog.Logger
	kick chan struct{}

	mu     sync.Mutex
	spec   *api.VMSpec // latest; nil when the VM is no longer ours
	seen   bool        // a spec (or its absence) has been delivered
	proc   *qemu.Process
	gen    int // restart generation already carried out
	status api.VMStatus
}

func newWorker(a *Agent, id string) *worker {
	return &worker{a: a, id: id, log: a.log.With("vm_id", id), kick: make(chan struct{}, 1), gen: -1}
}

// update records the latest spec and wakes the worker.
func (w *worker) update(s *api.VMSpec) {
	w.mu.Lock()
	if s != nil {
		c := *s
		s = &c
	}
	w.spec, w.seen = s, true
	w.mu.Unlock()
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

func (w *worker) latest() *api.VMSpec {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.spec
}

// run reconciles until the VM is gone from this host.
func (w *worker) run(ctx context.Context) {
	defer func() {
		if w.proc != nil {
			w.proc.Close()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.kick:
		case <-w.exited():
		}
		done, err := w.reconcile(ctx)
		if err != nil && ctx.Err() == nil {
			w.log.Warn("reconcile failed; retrying", "err", err)
			w.report(ctx, w.latest(), api.StateFailed, err.Error())
			sleep(ctx, 2*time.Second)
			w.poke()
		}
		if done {
			return
		}
	}
}

func (w *worker) poke() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// exited fires when the attached QEMU goes away.
func (w *worker) exited() <-chan struct{} {
	if w.proc == nil {
		return nil
	}
	return w.proc.Exited()
}

func (w *worker) alive() bool {
	if w.proc == nil {
		return false
	}
	select {
	case <-w.proc.Exited():
		w.proc.Close()
		w.proc = nil
		return false
	default:
		return true
	}
}

// attach finds a QEMU left running by an earlier agent.
func (w *worker) attach(ctx context.Context) error {
	if w.proc != nil {
		return nil
	}
	p, err := qemu.Attach(ctx, w.log, w.a.vmDir(w.id))
	if errors.Is(err, qemu.ErrNotRunning) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reattach to QEMU: %w", err)
	}
	w.log.Info("reattached to running QEMU", "pid", p.Pid)
	w.proc = p
	return nil
}

// reconcile does one pass; done means the worker can end.
func (w *worker) reconcile(ctx context.Context) (done bool, err error) {
	s := w.latest()
	if err := w.attach(ctx); err != nil {
		return false, err
	}
	wasAlive := w.proc != nil
	alive := w.alive()
	if s == nil {
		return true, w.destroy(ctx)
	}
	if s.Deleting {
		if err := w.destroy(ctx); err != nil {
			return false, err
		}
		if err := w.a.st.RemoveVM(ctx, *s); err != nil && !api.IsNotFound(err) {
			return false, fmt.Errorf("remove records: %w", err)
		}
		w.log.Info("vm deleted", "name", s.Name)
		return true, nil
	}
	if w.gen < 0 {
		w.gen = s.RestartGen
	}
	if wasAlive && !alive && s.Power != api.PowerStopped {
		return false, w.guestStopped(ctx, s)
	}
	if err := w.ensureFiles(ctx, s); err != nil {
		return false, err
	}
	switch s.Power {
	case api.PowerStopped:
		if alive {
			w.report(ctx, s, api.StateStopping, "")
			if err := w.stop(ctx); err != nil {
				return false, err
			}
		}
		w.report(ctx, s, api.StateStopped, "")
	case api.PowerRunning, api.PowerPaused:
		if alive && s.RestartGen > w.gen {
			w.report(ctx, s, api.StateStopping, "")
			if err := w.stop(ctx); err != nil {
				return false, err
			}
			alive = false
		}
		w.gen = s.RestartGen
		if !alive {
			w.report(ctx, s, api.StateStarting, "")
			if err := w.start(ctx, s); err != nil {
				return false, err
			}
		}
		return false, w.setPaused(ctx, s)
	}
	return false, nil
}

// guestStopped handles a QEMU that ended without being asked to: the guest
// powered off. Like other hypervisors, the VM is then off until started.
func (w *worker) guestStopped(ctx context.Context, s *api.VMSpec) error {
	w.log.Info("QEMU exited on its own; marking the VM stopped", "name", s.Name)
	_, err := w.a.st.UpdateVM(ctx, s.Name, func(v *api.VMSpec) error {
		if v.ID != s.ID {
			return api.Errorf(api.ErrConflict, "vm replaced")
		}
		v.Power, v.StopForce = api.PowerStopped, false
		return nil
	})
	if err != nil && !api.IsNotFound(err) {
		return fmt.Errorf("record guest power-off: %w", err)
	}
	w.report(ctx, s, api.StateStopped, "the guest powered off (or QEMU exited): "+qemuLogTail(w.a.vmDir(w.id)))
	return nil
}

func (w *worker) setPaused(ctx context.Context, s *api.VMSpec) error {
	st, err := w.proc.Status(ctx)
	if err != nil {
		return fmt.Errorf("query QEMU status: %w", err)
	}
	switch {
	case s.Power == api.PowerPaused && st == "running":
		err = w.proc.Pause(ctx)
		st = "paused"
	case s.Power == api.PowerRunning && st == "paused":
		err = w.proc.Resume(ctx)
		st = "running"
	}
	if err != nil {
		return fmt.Errorf("pause/resume: %w", err)
	}
	state := api.StateRunning
	if st == "paused" {
		state = api.StatePaused
	}
	w.report(ctx, s, state, "")
	return nil
}

// stop shuts the guest down: ACPI first unless forced, then a kill after
// the grace period. A newer spec that forces the stop (or deletes the VM)
// cuts the grace period short.
func (w *worker) stop(ctx context.Context) error {
	s := w.latest()
	forced := func(s *api.VMSpec) bool { return s == nil || s.StopForce || s.Deleting }
	if !forced(s) {
		if err := w.proc.Powerdown(ctx); err != nil {
			w.log.Warn("ACPI powerdown failed; killing", "err", err)
		} else {
			timer := time.NewTimer(w.a.cfg.StopTimeout)
			defer timer.Stop()
		wait:
			for {
				select {
				case <-w.proc.Exited():
					break wait
				case <-timer.C:
					w.log.Info("guest ignored ACPI shutdown; forcing", "after", w.a.cfg.StopTimeout)
					break wait
				case <-w.kick:
					if forced(w.latest()) {
						break wait
					}
				case <-ctx.Done():
					return ctx.Err()
				}
			}
		}
	}
	if err := w.proc.Kill(); err != nil {
		return fmt.Errorf("kill QEMU: %w", err)
	}
	<-w.proc.Exited()
	w.proc.Close()
	w.proc = nil
	w.poke()
	return nil
}

// report publishes the VM's state if it changed.
func (w *worker) report(ctx context.Context, s *api.VMSpec, state, msg string) {
	if s == nil {
		return
	}
	st := api.VMStatus{ID: s.ID, Host: w.a.cfg.Host, State: state, Error: msg, RestartGen: w.gen, Accel: w.a.cfg.Accel}
	if w.proc != nil {
		st.PID = w.proc.Pid
		st.StartedAt = w.status.StartedAt
		if st.StartedAt.IsZero() {
			st.StartedAt = time.Now().UTC()
		}
	}
	if st == w.status {
		return
	}
	if err := w.a.st.PutStatus(ctx, s.Name, st); err != nil {
		w.log.Warn("report status", "err", err)
		return
	}
	w.status = st
}
