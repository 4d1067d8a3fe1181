package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/qemu"
)

// qmpTimeout bounds every QMP call, so a wedged QEMU cannot hang a worker.
const qmpTimeout = 10 * time.Second

// worker converges one VM. Every step is safe to repeat after a crash:
// it looks at what exists (files, the QEMU process) before acting.
type worker struct {
	a    *Agent
	id   string
	log  *slog.Logger
	kick chan struct{}

	mu   sync.Mutex
	spec *api.VMSpec // latest; nil when the VM is no longer ours

	proc      *qemu.Process
	gen       int  // restart generation already carried out; -1 = not known yet
	guestExit bool // QEMU ended on its own and that is not recorded yet
	status    api.VMStatus
	dirty     bool // the last status could not be written

	// size is that of the guest proc runs: the VM's may have changed
	// since, for its next start.
	size qemu.Size

	open  []string         // ids of the volumes proc has (see attach.go)
	sizes map[string]int64 // their sizes as proc has them
	slots int              // proc's hot-plug slots for volumes

	exit  qemu.Exit  // why QEMU ended, with guestExit (crash.go)
	crash crashState // recent crashes (crash.go)

	migEnded     string    // id of the last migration that ended here (as source)
	inFailed     string    // id of the last migration this host could not prepare for (as target)
	lastProgress time.Time // of the last progress report
	mirrorLen    int64     // bytes of disk the migration mirrors
	migStart     time.Time // when this host started its last outgoing migration
	relay        relayState
	tun          tunnelState
	nbd          *qemu.NBDServe // target: receives the disk mirror
}

func newWorker(a *Agent, id string) *worker {
	w := &worker{a: a, id: id, log: a.log.With("vm_id", id), kick: make(chan struct{}, 1), gen: -1}
	w.loadCrashes()
	return w
}

// update records the latest spec and wakes the worker. A spec older than
// the one held (a late delivery, or one this agent superseded by its own
// write) is ignored.
func (w *worker) update(s *api.VMSpec) {
	w.mu.Lock()
	if s != nil {
		if w.spec != nil && s.Rev > 0 && s.Rev < w.spec.Rev {
			w.mu.Unlock()
			return
		}
		c := *s
		s = &c
	}
	w.spec = s
	w.mu.Unlock()
	w.poke()
}

func (w *worker) latest() *api.VMSpec {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.spec
}

func (w *worker) poke() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// handBack, deferred by a wait loop that takes kicks itself (to look at
// a new spec at once, then wait for the next event), gives a kick it took
// back to run, which then reconciles with the newest spec. Re-arming the
// kick inside the loop instead would wake it again at once, and it would
// poll rather than wait.
func (w *worker) handBack(kicked *bool) {
	if *kicked {
		w.poke()
	}
}

// pending reports whether an update arrived that no pass has seen.
func (w *worker) pending() bool { return len(w.kick) > 0 }

// run reconciles until the VM is gone from this host or ctx ends.
func (w *worker) run(ctx context.Context) {
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
			if s := w.latest(); s != nil && !s.Deleting {
				_ = w.report(ctx, s, api.StateFailed, err.Error())
			}
			sleep(ctx, 2*time.Second)
			w.poke()
			continue
		}
		if done {
			return
		}
		if w.dirty {
			sleep(ctx, time.Second)
			w.poke()
		}
	}
}

// close releases the QMP connection; the VM keeps running.
func (w *worker) close() {
	if w.proc != nil {
		w.proc.Close()
		w.proc = nil
	}
}

// exited fires when the attached QEMU goes away.
func (w *worker) exited() <-chan struct{} {
	if w.proc == nil {
		return nil
	}
	return w.proc.Exited()
}

// alive reports whether QEMU runs, noting an exit nobody asked for.
func (w *worker) alive() bool {
	if w.proc == nil {
		return false
	}
	select {
	case <-w.proc.Exited():
		w.noteExit() // before close: QEMU's last QMP words say why
		w.close()
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
	actx, cancel := context.WithTimeout(ctx, qmpTimeout)
	defer cancel()
	p, err := qemu.Attach(actx, w.log, w.a.vmDir(w.id))
	if errors.Is(err, qemu.ErrNotRunning) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reattach to QEMU: %w", err)
	}
	// The size it was started with: the VM's may have changed since.
	if w.size, err = p.Size(actx); err != nil {
		w.log.Warn("cannot read the size of the running guest; it is not reported", "err", err)
	}
	w.log.Info("reattached to running QEMU", "pid", p.Pid, "cpus", w.size.CPUs, "memory_mib", w.size.MemoryMiB)
	w.proc = p
	if err := w.readVolumes(actx); err != nil {
		w.log.Warn("cannot read the running guest's volumes", "err", err)
	}
	return nil
}

// reconcile does one pass; done means the worker can end.
func (w *worker) reconcile(ctx context.Context) (done bool, err error) {
	s := w.latest()
	if s == nil || s.Deleting {
		return w.remove(ctx, s)
	}
	if s.Host != w.a.cfg.Host {
		if s.Migration == nil || s.Migration.Target != w.a.cfg.Host {
			return w.remove(ctx, nil) // not ours in any way (any more)
		}
		return false, w.incoming(ctx, s)
	}
	if err := w.attach(ctx); err != nil {
		return false, err
	}
	if w.discardUncommitted(s) {
		w.poke()
		return false, nil
	}
	alive := w.alive()
	if s.HA && w.a.fence.holds() {
		// Fenced: the VM may be restarted elsewhere; it must not run here.
		if alive {
			qemu.KillAll(w.log, w.a.vmDir(w.id))
			w.close()
		}
		w.guestExit, w.exit = false, qemu.Exit{} // neither a power-off nor a crash
		return false, nil
	}
	if w.gen < 0 {
		w.gen = s.RestartGen
		if st, err := w.a.cp.Status(ctx, s.ID); err == nil {
			w.gen = st.RestartGen // a restart asked for while we were away is still due
		}
	}
	if s.Migration != nil {
		// While the VM migrates, nothing here starts or stops it: only the
		// migration's end (commit or abort) decides where it runs.
		if alive {
			return false, w.outgoing(ctx, s)
		}
		return false, w.migrationLost(ctx, s)
	}
	if w.guestExit {
		if s.Power == api.PowerStopped {
			w.guestExit = false
		} else if !w.crashed(s) {
			return false, w.guestStopped(ctx, s)
		}
	}
	if hold, err := w.restartHold(ctx, s, alive); hold || err != nil {
		return false, err // a crashed VM waits for its restart, or was given up
	}
	if s.Power == api.PowerStopped {
		if alive {
			if err := w.report(ctx, s, api.StateStopping, ""); err != nil {
				return false, err
			}
			if err := w.stop(ctx); err != nil {
				return false, err
			}
		}
		return false, w.report(ctx, s, api.StateStopped, "")
	}
	if err := w.ensureFiles(ctx, s); err != nil {
		return false, err
	}
	w.markHA(s.HA)
	if alive && s.RestartGen > w.gen {
		if err := w.report(ctx, s, api.StateStopping, ""); err != nil {
			return false, err
		}
		if err := w.stop(ctx); err != nil {
			return false, err
		}
		alive = false
	}
	if !alive {
		if err := w.report(ctx, s, api.StateStarting, ""); err != nil {
			return false, err
		}
		if err := w.start(ctx, s); err != nil {
			return false, err
		}
	}
	w.gen = s.RestartGen
	if err := w.syncVolumes(ctx, s); err != nil {
		return false, err
	}
	return false, w.setPaused(ctx, s)
}

// remove ends the VM here: always for a delete, and when the VM is no
// longer ours. Only a successful removal ends the worker.
func (w *worker) remove(ctx context.Context, s *api.VMSpec) (bool, error) {
	deleting := s != nil && s.Deleting
	if !deleting {
		if err := w.awaitPostcopy(ctx); err != nil {
			return false, err
		}
		w.lingerAfterMigration(ctx)
	}
	if err := w.destroy(ctx, deleting); err != nil {
		return false, err
	}
	if deleting {
		if err := w.a.cp.Removed(ctx, *s); err != nil {
			return false, fmt.Errorf("remove records: %w", err)
		}
		w.log.Info("vm deleted", "name", s.Name)
	}
	return true, nil
}

// sourceLinger is how long the source of a migration keeps its stopped
// QEMU once the target has taken the VM over. Tearing it down frees the
// guest's memory, which takes a core for several milliseconds; done at
// once, that competes with the target's resume of the guest, which
// follows the same commit (lab A/B, 24 migrations each: pause median 38
// to 34 ms). The frame relay goes on meanwhile.
const sourceLinger = 150 * time.Millisecond

// lingerAfterMigration waits sourceLinger if this host's QEMU is a source
// whose migration completed ("postmigrate": it cannot run the guest
// again unless told to). Any other QEMU is torn down at once: a VM given
// to another host must not run here a moment longer.
func (w *worker) lingerAfterMigration(ctx context.Context) {
	if w.proc == nil || !w.alive() {
		return
	}
	qctx, cancel := context.WithTimeout(ctx, qmpTimeout)
	st, err := w.proc.Status(qctx)
	cancel()
	if err == nil && st == "postmigrate" {
		sleep(ctx, sourceLinger)
	}
}

// awaitPostcopy, on the source of a migration committed in post-copy,
// waits until QEMU has sent the target the rest of the guest's memory:
// until then the guest's only copy of those pages is here.
func (w *worker) awaitPostcopy(ctx context.Context) error {
	if err := w.attach(ctx); err != nil || !w.alive() {
		return nil
	}
	for logged := false; ; logged = true {
		qctx, cancel := context.WithTimeout(ctx, qmpTimeout)
		q, err := w.proc.QueryMigrate(qctx)
		cancel()
		if err != nil || !strings.HasPrefix(q.Status, "postcopy") {
			return nil
		}
		if !logged {
			w.log.Info("the VM runs on the target in post-copy; sending it the rest of its memory before letting go", "status", q.Status)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-w.proc.Exited():
			return nil
		case <-time.After(migrationPoll):
		}
	}
}

// guestStopped records that QEMU ended without being asked to: the guest
// powered off. Like other hypervisors, the VM is then off until started.
// A newer intent (a start or restart written since) wins over it.
func (w *worker) guestStopped(ctx context.Context, s *api.VMSpec) error {
	w.log.Info("QEMU exited on its own; marking the VM stopped", "name", s.Name)
	v, err := w.a.cp.GuestStopped(ctx, *s)
	switch {
	case errors.Is(err, api.ErrConflict) || api.IsNotFound(err):
		w.guestExit = false // the newer spec decides; the next pass acts on it
		w.poke()
		return nil
	case err != nil:
		return fmt.Errorf("record guest power-off: %w", err)
	}
	w.guestExit = false
	return w.report(ctx, &v, api.StateStopped, "the guest powered off (or QEMU exited): "+qemuLogTail(w.a.vmDir(w.id)))
}

func (w *worker) setPaused(ctx context.Context, s *api.VMSpec) error {
	qctx, cancel := context.WithTimeout(ctx, qmpTimeout)
	defer cancel()
	st, err := w.proc.Status(qctx)
	if err != nil {
		w.close() // a broken QMP connection: attach again next pass
		return fmt.Errorf("query QEMU status: %w", err)
	}
	switch {
	case st == "postmigrate" || st == "finish-migrate" || st == "inmigrate":
		if s.Migration != nil {
			return w.report(ctx, s, api.StateMigrating, "")
		}
		// A migration that ended without a commit: the VM is still ours.
		w.log.Info("migration did not commit; resuming the VM here", "qemu", st)
		if st, err = w.settleCalledOff(qctx, st); err == nil && st != "running" {
			err, st = w.proc.Resume(qctx), "running"
		}
	case s.Power == api.PowerPaused && st == "running":
		err, st = w.proc.Pause(qctx), "paused"
	case s.Power == api.PowerRunning && (st == "paused" || st == "prelaunch"):
		err, st = w.proc.Resume(qctx), "running"
	}
	if err != nil {
		return fmt.Errorf("pause/resume: %w", err)
	}
	switch st {
	case "running":
		return w.report(ctx, s, api.StateRunning, "")
	case "paused", "prelaunch":
		return w.report(ctx, s, api.StatePaused, "")
	}
	return w.report(ctx, s, api.StateFailed, "QEMU reports the VM as "+st)
}

// settleCalledOff ends what is left in QEMU of a migration that was
// called off while QEMU was at its switchover (finish-migrate: paused,
// waiting for the agent): cancelled, QEMU resumes the guest by itself.
// It returns QEMU's status afterwards.
func (w *worker) settleCalledOff(ctx context.Context, st string) (string, error) {
	if st != "finish-migrate" {
		return st, nil
	}
	if err := w.proc.CancelMigration(ctx); err != nil {
		return st, fmt.Errorf("cancel the migration left at its switchover: %w", err)
	}
	for st == "finish-migrate" && ctx.Err() == nil {
		sleep(ctx, 20*time.Millisecond)
		var err error
		if st, err = w.proc.Status(ctx); err != nil {
			return st, err
		}
	}
	return st, nil
}

// stop shuts the guest down: ACPI first unless forced, then a kill after
// the grace period. A newer spec that forces the stop (or deletes the VM)
// cuts the grace period short. Kicks consumed here are re-posted at the
// end, so no update is lost.
func (w *worker) stop(ctx context.Context) error {
	forced := func(s *api.VMSpec) bool { return s == nil || s.StopForce || s.Deleting }
	if !forced(w.latest()) && w.powerdown(ctx) {
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
	if err := w.proc.Kill(); err != nil {
		return fmt.Errorf("kill QEMU: %w", err)
	}
	<-w.proc.Exited()
	w.close()
	w.poke()
	return nil
}

// powerdown asks the guest to shut down (resuming it first if paused, as
// a paused guest cannot see the ACPI event); false means it could not.
func (w *worker) powerdown(ctx context.Context) bool {
	qctx, cancel := context.WithTimeout(ctx, qmpTimeout)
	defer cancel()
	if st, err := w.proc.Status(qctx); err == nil && st == "paused" {
		_ = w.proc.Resume(qctx)
	}
	if err := w.proc.Powerdown(qctx); err != nil {
		w.log.Warn("ACPI powerdown failed; killing", "err", err)
		return false
	}
	return true
}

// report publishes the VM's state if it changed. A failed write is
// retried by the run loop.
func (w *worker) report(ctx context.Context, s *api.VMSpec, state, msg string) error {
	st := api.VMStatus{ID: s.ID, Name: s.Name, Host: w.a.cfg.Host, State: state, Error: msg,
		RestartGen: max(w.gen, 0), Accel: w.a.cfg.Accel, ObservedRev: s.Rev}
	if w.proc != nil {
		st.PID = w.proc.Pid
		st.Volumes, st.VolumeSlots = slices.Clone(w.open), w.slots
		st.RunningCPUs, st.RunningMemoryMiB = w.size.CPUs, w.size.MemoryMiB
		st.StartedAt = w.status.StartedAt
		if st.StartedAt.IsZero() {
			st.StartedAt = time.Now().UTC()
		}
	}
	if st.Equal(w.status) && !w.dirty {
		return nil
	}
	if err := w.a.cp.Report(ctx, st); err != nil {
		w.dirty = true
		return fmt.Errorf("report status: %w", err)
	}
	w.status, w.dirty = st, false
	return nil
}
