package api

import (
	"fmt"
	"time"
)

// DrainRequest is the body of POST /v1/hosts/{name}/drain. The options
// are passed on to every live migration of the drain.
type DrainRequest struct {
	Parallel int `json:"parallel,omitempty"` // live migrations at once; 0 = the default (2)
	MigrationOptions
}

// States of a drain.
const (
	DrainRunning = "running" // VMs are still being moved off the host
	DrainDone    = "done"    // every VM moved, or stayed with a reason
)

// What became of one VM of a drain. Pending and migrating are on the way;
// the others are final.
const (
	DrainPending   = "pending"   // not handled yet
	DrainMigrating = "migrating" // its live migration is under way
	DrainMoved     = "moved"     // it now belongs to another host
	DrainStayed    = "stayed"    // it could not move, and Reason says why
	DrainFailed    = "failed"    // its live migration failed; it still runs on the host
)

// How a VM left a drained host.
const (
	DrainLive       = "live"       // live migration
	DrainReassigned = "reassigned" // stopped, disk on a shared pool: given to another host
)

// DrainReport is a drain as the API shows it (GET /v1/hosts/{name}/drain);
// the last one of each host is kept.
type DrainReport struct {
	ID        string           `json:"id"`
	Host      string           `json:"host"`
	State     string           `json:"state"` // running, done
	Parallel  int              `json:"parallel"`
	Options   MigrationOptions `json:"options"`
	Resumed   bool             `json:"resumed,omitempty"` // the host went back in service before the drain ended
	StartedAt time.Time        `json:"started_at"`
	EndedAt   time.Time        `json:"ended_at,omitzero"`
	VMs       []DrainVM        `json:"vms"`
}

// DrainVM is one VM of a drain.
type DrainVM struct {
	Name       string `json:"name"`
	ID         string `json:"id"`
	Result     string `json:"result"` // pending, migrating, moved, stayed, failed
	How        string `json:"how,omitempty"`
	To         string `json:"to,omitempty"`
	Reason     string `json:"reason,omitempty"` // why it stayed or failed (or, while pending, why it waits)
	DowntimeMs int64  `json:"downtime_ms"`
	Migration  string `json:"migration_id,omitempty"`
	// Since is when the drain first found the VM not ready to move, and
	// RetrySince when a move of it was first refused for a passing reason;
	// the drain gives up on it after a while.
	Since      time.Time `json:"waiting_since,omitzero"`
	RetrySince time.Time `json:"retrying_since,omitzero"`
}

// Final reports whether the VM's result will not change any more.
func (v DrainVM) Final() bool { return v.Result != DrainPending && v.Result != DrainMigrating }

// DrainTally counts what became of the VMs of a drain.
type DrainTally struct {
	Live, Reassigned, Stayed, Failed, Pending int
}

// Moved is how many VMs left the host.
func (t DrainTally) Moved() int { return t.Live + t.Reassigned }

// Tally counts the results of the drain's VMs.
func (r DrainReport) Tally() DrainTally {
	var t DrainTally
	for _, v := range r.VMs {
		switch {
		case v.Result == DrainMoved && v.How == DrainReassigned:
			t.Reassigned++
		case v.Result == DrainMoved:
			t.Live++
		case v.Result == DrainStayed:
			t.Stayed++
		case v.Result == DrainFailed:
			t.Failed++
		default:
			t.Pending++
		}
	}
	return t
}

// MovedOff says how many VMs left the host, and how.
func (t DrainTally) MovedOff() string {
	switch {
	case t.Moved() == 0:
		return "no VM moved off"
	case t.Reassigned == 0:
		return vmCount(t.Moved()) + " moved off live"
	case t.Live == 0:
		return vmCount(t.Moved()) + " (stopped) reassigned to other hosts"
	}
	return fmt.Sprintf("%s moved off (%d live, %d reassigned while stopped)", vmCount(t.Moved()), t.Live, t.Reassigned)
}

// NotMoved says how many VMs stayed on the host or failed to move.
func (t DrainTally) NotMoved() string {
	switch {
	case t.Stayed > 0 && t.Failed > 0:
		return fmt.Sprintf("%s stayed and %d failed to move", vmCount(t.Stayed), t.Failed)
	case t.Failed > 0:
		return vmCount(t.Failed) + " failed to move"
	}
	return vmCount(t.Stayed) + " stayed"
}

func vmCount(n int) string {
	if n == 1 {
		return "1 VM"
	}
	return fmt.Sprintf("%d VMs", n)
}
