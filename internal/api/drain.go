package api

import "time"

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
