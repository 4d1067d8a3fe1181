package server

import (
	"fmt"
	"time"

	"github.com/shoalvm/shoal/internal/api"
)

// What the migration controller does after a look at a migration.
const (
	actWait  = iota // nothing yet
	actAbort        // call it off
	actEnd          // it is over: record it
)

// reasonDeleted ends the migration of a VM deleted meanwhile.
const reasonDeleted = "the VM was deleted"

type verdict struct {
	action         int
	result, reason string
}

// judge decides what to do about migration rec of the VM whose spec is sp
// (nil: the VM is gone), given which hosts are alive and what was seen
// before (wt, updated here). Pure: no I/O, the time is passed in.
func judge(rec api.MigrationRecord, sp *api.VMSpec, alive map[string]bool, wt *watch, now time.Time) verdict {
	if sp == nil {
		return verdict{actEnd, api.MigrationFailed, reasonDeleted}
	}
	m := sp.Migration
	if rec.Superseded {
		return verdict{actEnd, api.MigrationFailed, rec.Error}
	}
	if m == nil || m.ID != rec.ID {
		if sp.Host != rec.To {
			if rec.Result == api.MigrationCancelled || rec.Result == api.MigrationFailed {
				return verdict{actEnd, rec.Result, rec.Error}
			}
			// Taken out of the spec without a commit by a path that
			// recorded no reason; the VM stayed on its host.
			return verdict{actEnd, api.MigrationFailed, fmt.Sprintf("called off: the migration left the VM's spec without a commit; the VM stays on %s", sp.Host)}
		}
		if wt.endedAt.IsZero() {
			wt.endedAt = now
		}
		p := rec.Progress
		figures := p != nil && p.ID == rec.ID && p.Phase == api.MigrationCompleted && rec.SwitchMs > 0
		if figures || now.Sub(wt.endedAt) >= finalReportGrace {
			return verdict{actEnd, api.MigrationCompleted, ""}
		}
		return verdict{action: actWait}
	}
	if ep := m.Endpoint; ep != nil && ep.Error != "" {
		return verdict{actAbort, api.MigrationFailed, ep.Error}
	}
	p := rec.Progress
	if p != nil && p.ID != rec.ID {
		p = nil
	}
	if p != nil && p.Postcopy {
		// Past the point where the source could take over again: the
		// target runs the guest; only the migration's end is left.
		return verdict{action: actWait}
	}
	if p != nil && p.Phase == api.MigrationFailed {
		return verdict{actAbort, api.MigrationFailed, "source " + rec.From + ": " + p.Error}
	}
	if rec.Error != "" { // an abort was decided but not carried out
		return verdict{actAbort, rec.Result, rec.Error}
	}
	if downFor(&wt.targetDown, alive[rec.To], now) >= targetDownGrace {
		return verdict{actAbort, api.MigrationFailed, fmt.Sprintf("target host %s is down", rec.To)}
	}
	if downFor(&wt.sourceDown, alive[rec.From], now) >= targetDownGrace {
		// The guest died with its host; if it is HA, failover restarts it.
		return verdict{actAbort, api.MigrationFailed, fmt.Sprintf("source host %s is down", rec.From)}
	}
	mark := "waiting"
	if m.Endpoint != nil {
		mark = "ready"
	}
	if p != nil {
		mark = fmt.Sprint(p.Phase, p.Moved, p.DiskDone)
	}
	if mark != wt.lastMark || wt.lastChange.IsZero() {
		wt.lastMark, wt.lastChange = mark, now
	}
	switch {
	case m.Endpoint == nil && now.Sub(rec.StartedAt) >= prepareTimeout:
		return verdict{actAbort, api.MigrationFailed, fmt.Sprintf("target host %s did not get ready within %s", rec.To, prepareTimeout)}
	case m.Endpoint != nil && now.Sub(wt.lastChange) >= stallTimeout:
		return verdict{actAbort, api.MigrationFailed, fmt.Sprintf("no progress for %s: is the network between %s and %s cut?", stallTimeout, rec.From, rec.To)}
	}
	return verdict{action: actWait}
}

// downFor tracks since when a host is seen down (*since, zero while up)
// and returns for how long.
func downFor(since *time.Time, alive bool, now time.Time) time.Duration {
	switch {
	case alive:
		*since = time.Time{}
		return 0
	case since.IsZero():
		*since = now
	}
	return now.Sub(*since)
}
