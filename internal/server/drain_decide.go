package server

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/shoalvm/shoal/internal/api"
)

// drainPatience is how long a drain waits for a VM to become movable
// (e.g. to finish starting or stopping), or retries a move that failed for
// a passing reason, before it leaves the VM where it is.
const drainPatience = 2 * time.Minute

// drainCand is one VM with a part on the drained host, as the drain's
// decision sees it.
type drainCand struct {
	Name, ID  string
	State     string // as users see it (api.VM.State)
	Power     string
	Pool      string
	Error     string // the host's error, for a failed VM
	Settled   bool   // the host reported on the VM's current spec
	Inbound   bool   // it is migrating onto the host: a candidate once it lands
	Migrating bool   // a migration of it is in flight
	Deleting  bool
}

// migOutcome is what became of a migration the drain started.
type migOutcome struct {
	Running bool
	Gone    bool                // in flight nowhere, in no history: the VM was deleted
	Rec     api.MigrationRecord // once ended
}

// drainInput is everything one look at a drain needs.
type drainInput struct {
	Report   api.DrainReport
	VMs      []drainCand           // VMs with a part on the host
	Outcomes map[string]migOutcome // by migration id, of the entries migrating
	Resumed  bool                  // the host left maintenance: start nothing more
	Now      time.Time
}

// drainPlan is what to do next: the report as it now stands, the VMs to
// start migrating and the stopped ones to give another host. The driver
// records the outcome of each with afterStart and afterReassign.
type drainPlan struct {
	Report   api.DrainReport
	Migrate  []string
	Reassign []string
}

// What the drain does about one VM.
const (
	vmSkip     = iota // not the drain's business (being deleted)
	vmWait            // not movable yet; give up after drainPatience
	vmWaitMig         // a migration of it is in flight; wait for its end
	vmMigrate         // migrate it live
	vmReassign        // stopped on a shared pool: give it another host
	vmStay            // it cannot move: the reason says why and what to do
)

// planDrain decides the next step of a drain: it records how the
// migrations in flight ended, adds VMs that came to the host, and picks
// which VMs to move next, at most Parallel live migrations at once, in
// name order. Pure: no I/O, the time is passed in.
func planDrain(in drainInput) drainPlan {
	rep := in.Report
	rep.VMs = slices.Clone(rep.VMs)
	resumed := in.Resumed || rep.Resumed // once resumed, the drain stays so
	rep.Resumed = resumed
	cands := map[string]drainCand{}
	for _, c := range in.VMs {
		cands[c.Name] = c
	}
	inflight := 0
	kept := rep.VMs[:0]
	for _, e := range rep.VMs {
		c, here := cands[e.Name]
		switch {
		case e.Result == api.DrainMigrating:
			o, ok := in.Outcomes[e.Migration]
			switch {
			case !ok || o.Running:
				inflight++
			case o.Gone:
				continue // deleted meanwhile: nothing left to report
			default:
				migrationEnded(&e, o.Rec)
			}
		case e.Result == api.DrainPending && (!here || c.ID != e.ID):
			continue // it left the host some other way (deleted, moved by someone)
		}
		kept = append(kept, e)
	}
	rep.VMs = kept
	known := map[string]bool{}
	for _, e := range rep.VMs {
		known[e.Name] = true
	}
	for _, c := range in.VMs {
		if !known[c.Name] && !c.Deleting && !resumed { // after a resume, VMs that come are no business of the drain
			rep.VMs = append(rep.VMs, api.DrainVM{Name: c.Name, ID: c.ID, Result: api.DrainPending})
		}
	}
	slices.SortFunc(rep.VMs, func(a, b api.DrainVM) int { return strings.Compare(a.Name, b.Name) })

	var plan drainPlan
	kept = rep.VMs[:0]
	for _, e := range rep.VMs {
		if e.Result != api.DrainPending {
			kept = append(kept, e)
			continue
		}
		act, reason := judgeDrainVM(cands[e.Name], rep.Host, resumed)
		switch act {
		case vmSkip:
			continue
		case vmMigrate, vmReassign:
			e.Since = time.Time{}
			if !e.RetrySince.IsZero() && in.Now.Sub(e.RetrySince) >= drainPatience {
				e.Result = api.DrainStayed // its move kept being refused: say why
				e.Reason = fmt.Sprintf("its move was refused for %s, last because: %s", drainPatience, e.Reason)
				break
			}
			switch {
			case act == vmReassign:
				plan.Reassign = append(plan.Reassign, e.Name)
			case inflight+len(plan.Migrate) < max(rep.Parallel, 1):
				plan.Migrate = append(plan.Migrate, e.Name)
			case e.RetrySince.IsZero(): // else Reason says why its last try was refused
				e.Reason = fmt.Sprintf("waits for its turn (%d live migrations at a time)", max(rep.Parallel, 1))
			}
		case vmStay:
			e.Result, e.Reason = api.DrainStayed, reason
		case vmWait:
			if e.Since.IsZero() {
				e.Since = in.Now
			}
			e.Reason = reason
			if in.Now.Sub(e.Since) >= drainPatience {
				e.Result = api.DrainStayed
				e.Reason = fmt.Sprintf("it was %s for %s: drain again once it is running or stopped", cands[e.Name].State, drainPatience)
			}
		case vmWaitMig:
			e.Reason = reason
		}
		kept = append(kept, e)
	}
	rep.VMs = kept
	plan.Report = rep
	return plan
}

// judgeDrainVM says what a drain of host does about VM c, and for a VM
// that stays or waits, why (a message that says what to do). Pure.
func judgeDrainVM(c drainCand, host string, resumed bool) (int, string) {
	switch {
	case c.Deleting, c.Inbound && resumed:
		return vmSkip, ""
	case resumed:
		return vmStay, fmt.Sprintf("not moved: host %s was put back in service ('shoal host resume') before its turn", host)
	case c.Inbound:
		return vmWaitMig, "it is migrating onto this host"
	case c.Migrating:
		return vmWaitMig, "a migration of it is under way"
	case c.Power == api.PowerPaused:
		return vmStay, fmt.Sprintf("it is paused, and only a running VM migrates live: resume it ('shoal vm resume %s') and drain again", c.Name)
	case !c.Settled:
		return vmWait, fmt.Sprintf("it is %s", c.State)
	case c.Power == api.PowerRunning && c.State == api.StateRunning:
		return vmMigrate, ""
	case c.Power == api.PowerRunning && c.State == api.StateFailed:
		return vmStay, fmt.Sprintf("it has failed on %s (%s): start it again ('shoal vm start %s') and drain again, or stop it",
			host, dashIf(c.Error), c.Name)
	case c.Power == api.PowerStopped && c.State == api.StateStopped:
		if c.Pool != "local" {
			return vmReassign, ""
		}
		return vmStay, fmt.Sprintf("it is stopped, with its disk on the local pool of %s, which only a live migration carries: to move it, resume the host ('shoal host resume %s'), start the VM and drain again; else it stays here, stopped",
			host, host)
	}
	return vmWait, fmt.Sprintf("it is %s", c.State)
}

// migrationEnded records in e how its live migration ended.
func migrationEnded(e *api.DrainVM, rec api.MigrationRecord) {
	if rec.Result == api.MigrationCompleted {
		e.Result, e.How, e.To, e.DowntimeMs, e.Reason = api.DrainMoved, api.DrainLive, rec.To, rec.DowntimeMs, ""
		return
	}
	e.Result = api.DrainFailed
	e.Reason = fmt.Sprintf("live migration to %s %s: %s; it still runs on %s (drain again to retry)", rec.To, rec.Result, dashIf(rec.Error), rec.From)
}

// afterStart records in e the outcome of starting its live migration. A
// refusal for a passing reason (the VM changed meanwhile, the store was
// briefly unavailable) leaves it pending, to retry on the next look;
// planDrain gives up after drainPatience. Any other refusal (no host
// fits: the scheduler's message) is final.
func afterStart(e *api.DrainVM, rec api.MigrationRecord, err error, now time.Time) {
	if err == nil {
		e.Result, e.How, e.To, e.Migration, e.Reason = api.DrainMigrating, api.DrainLive, rec.To, rec.ID, ""
		e.Since, e.RetrySince = time.Time{}, time.Time{}
		return
	}
	refused(e, err, now)
}

// afterReassign records in e the outcome of giving its stopped VM
// another host (to), as afterStart does.
func afterReassign(e *api.DrainVM, to string, err error, now time.Time) {
	if err == nil {
		e.Result, e.How, e.To, e.Reason = api.DrainMoved, api.DrainReassigned, to, ""
		e.Since, e.RetrySince = time.Time{}, time.Time{}
		return
	}
	refused(e, err, now)
}

func refused(e *api.DrainVM, err error, now time.Time) {
	e.Reason = err.Error()
	if errors.Is(err, api.ErrConflict) || errors.Is(err, api.ErrUnavailable) || errors.Is(err, api.ErrNotFound) {
		if e.RetrySince.IsZero() {
			e.RetrySince = now
		}
		return
	}
	e.Result = api.DrainStayed
}

// drainOver reports whether every VM of a drain has its final result.
func drainOver(rep api.DrainReport) bool {
	for _, e := range rep.VMs {
		if !e.Final() {
			return false
		}
	}
	return true
}

func dashIf(s string) string {
	if s == "" {
		return "no error reported"
	}
	return s
}
