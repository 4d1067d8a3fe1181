package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/ha"
	"github.com/shoalvm/shoal/internal/qemu"
)

// Restarting crashed VMs in place.
//
// When a VM's QEMU ends without being asked, the worker asks QEMU why
// (qemu.Process.ExitReason). A guest that powered itself off stays off
// (guestStopped). Anything else, QEMU killed or crashed, or the guest's
// kernel panicked, is a crash: the worker starts the VM again on this
// host after the wait ha.RestartPolicy gives, reporting "starting" with
// the reason meanwhile, and once the VM crashed more often than the
// policy allows, reports it failed with the reason and leaves it off.
//
// The crash history is kept in the worker and, so that an agent restart
// neither starts a VM the policy gave up on nor resets its count, in the
// VM's directory (crashFile). The user clears it by starting the VM again
// ('shoal vm start' on a failed VM writes its spec anew), by restarting
// it, or by stopping it.

// crashFile, in a VM's directory, holds its crash history.
const crashFile = "crashes.json"

// savedCrashes is crashState as crashFile holds it.
type savedCrashes struct {
	Times  []time.Time `json:"times"`
	Gen    int         `json:"gen"`
	Rev    int64       `json:"rev,omitempty"`
	Due    time.Time   `json:"due,omitzero"`
	GaveUp bool        `json:"gave_up,omitempty"`
	Msg    string      `json:"msg,omitempty"`
}

// crashState is one VM's recent crashes.
type crashState struct {
	times  []time.Time // of the recent crashes, oldest first
	gen    int         // the spec's RestartGen they happened under
	rev    int64       // the spec revision when the policy gave up
	due    time.Time   // a restart waits until then; zero = none pending
	gaveUp bool
	msg    string // what the VM reports while waiting, or once given up
	timer  *time.Timer
}

// restartPolicy is how this agent restarts crashed VMs.
func (a *Agent) restartPolicy() ha.RestartPolicy { return ha.DefaultRestartPolicy() }

// noteExit records that QEMU ended on its own, and why. It must run
// before the Process is closed: the reason is in QEMU's last QMP words.
func (w *worker) noteExit() {
	w.exit = w.proc.ExitReason()
	w.guestExit = true
}

// crashed handles an exit that was not the guest powering off: it counts
// the crash and schedules a restart or gives up. false means the exit was
// a power-off, for guestStopped.
func (w *worker) crashed(s *api.VMSpec) bool {
	e := w.exit
	if !e.Crashed() {
		return false
	}
	w.guestExit = false
	p, c, now := w.a.restartPolicy(), &w.crash, w.now()
	if c.gen != s.RestartGen {
		w.forgetCrashes()
	}
	c.times = append(slices.DeleteFunc(c.times, func(t time.Time) bool { return now.Sub(t) >= p.Period }), now)
	c.gen = s.RestartGen
	n, _ := p.Recent(c.times, now)
	wait, giveUp := p.Next(c.times, now)
	period := ha.ShortDuration(p.Period)
	log := w.log.With("name", s.Name, "reason", e.Reason, "cause", e.Cause, "crashes", n, "within", period,
		"qemu_log", qemuLogTail(w.a.vmDir(w.id)))
	defer w.saveCrashes()
	if giveUp {
		c.gaveUp, c.rev, c.due = true, s.Rev, time.Time{}
		c.msg = fmt.Sprintf("the VM crashed %d times in %s, the last time: %s; start it again with 'shoal vm start %s' once fixed",
			n, period, e.Reason, s.Name)
		log.Error("VM keeps crashing; not restarting it", "policy", p.String())
		w.crashEvent(*s, e.Reason, fmt.Sprintf("not restarting it: %d crashes in %s; 'shoal vm start %s' tries again", n, period, s.Name), true)
		return true
	}
	c.due = now.Add(wait)
	c.msg = fmt.Sprintf("the VM crashed (%s); restarting in %s (restart %d of %d allowed in %s)",
		e.Reason, ha.ShortDuration(wait), n, p.Limit, period)
	log.Warn("VM crashed; restarting it in place", "in", wait, "console", consoleTail(w.a.vmDir(w.id), 20))
	w.crashEvent(*s, e.Reason, fmt.Sprintf("restarting it in place in %s (restart %d of %d allowed in %s)",
		ha.ShortDuration(wait), n, p.Limit, period), false)
	return true
}

// crashEvent records the crash in the cluster's event log, in the
// background: the worker goes on with the restart meanwhile.
func (w *worker) crashEvent(s api.VMSpec, reason, what string, gaveUp bool) {
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := w.a.cp.Crashed(ctx, w.a.cfg.Host, s, reason, what, gaveUp); err != nil {
			w.log.Warn("could not record the crash as an event", "err", err)
		}
	}()
}

// restartHold keeps a crashed VM off while its restart waits, or for good
// once the policy gave up, reporting why; hold means this pass is done.
// A newer intent of the user's clears the history.
func (w *worker) restartHold(ctx context.Context, s *api.VMSpec, alive bool) (hold bool, err error) {
	c := &w.crash
	switch {
	case len(c.times) == 0:
		return false, nil
	case s.Power == api.PowerStopped || s.RestartGen != c.gen || c.gaveUp && s.Rev > c.rev:
		w.log.Info("crash history cleared by a new start, restart or stop", "name", s.Name)
		w.forgetCrashes()
		return false, nil
	case alive:
		c.due = time.Time{}
		return false, nil
	case c.gaveUp:
		return true, w.report(ctx, s, api.StateFailed, c.msg)
	case c.due.IsZero():
		return false, nil
	}
	if left := c.due.Sub(w.now()); left > 0 {
		w.wakeIn(left)
		return true, w.report(ctx, s, api.StateStarting, c.msg)
	}
	c.due = time.Time{}
	return false, nil
}

// wakeIn pokes the worker after d, once: the run loop is never blocked
// by a restart's wait.
func (w *worker) wakeIn(d time.Duration) {
	if w.crash.timer == nil {
		w.crash.timer = time.AfterFunc(d, w.poke)
		return
	}
	w.crash.timer.Reset(d)
}

func (w *worker) forgetCrashes() {
	if w.crash.timer != nil {
		w.crash.timer.Stop()
	}
	w.crash = crashState{}
	w.exit = qemu.Exit{}
	if err := os.Remove(filepath.Join(w.a.vmDir(w.id), crashFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		w.log.Warn("could not remove the crash history", "err", err)
	}
}

// saveCrashes writes the crash history to the VM's directory.
func (w *worker) saveCrashes() {
	c := w.crash
	b, err := json.Marshal(savedCrashes{Times: c.times, Gen: c.gen, Rev: c.rev, Due: c.due, GaveUp: c.gaveUp, Msg: c.msg})
	if err == nil {
		err = writeAtomic(filepath.Join(w.a.vmDir(w.id), crashFile), b)
	}
	if err != nil {
		w.log.Warn("could not keep the crash history; an agent restart would forget it", "err", err)
	}
}

// loadCrashes reads the crash history an earlier run of the agent kept.
func (w *worker) loadCrashes() {
	// The VM's QEMU user owns its dir: a bounded read, through no link.
	b := qemu.ReadTail(64<<10, filepath.Join(w.a.vmDir(w.id), crashFile))
	if len(b) == 0 {
		return
	}
	var s savedCrashes
	if err := json.Unmarshal(b, &s); err != nil {
		w.log.Warn("crash history unreadable; starting afresh", "err", err)
		return
	}
	w.crash = crashState{times: s.Times, gen: s.Gen, rev: s.Rev, due: s.Due, gaveUp: s.GaveUp, msg: s.Msg}
}

// consoleTail returns the last n lines of a VM's serial console, where a
// guest's panic message is: the restart's boot will push it out of sight.
func consoleTail(dir string, n int) string {
	lines := strings.Split(strings.TrimSpace(string(qemu.ConsoleTail(dir, qemu.LogTail))), "\n")
	return strings.Join(lines[max(len(lines)-n, 0):], "\n")
}
