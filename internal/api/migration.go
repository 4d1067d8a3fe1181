package api

import "time"

// StateMigrating is the state of a VM whose live migration is under way.
const StateMigrating = "migrating"

// Migration is a live migration in progress. It is part of the VM's spec,
// so that both hosts converge on it: the target prepares a waiting QEMU,
// the source streams to it once Endpoint is known, and the target commits
// the move (Host = Target, Migration = nil) by compare-and-swap. Clearing
// it without that commit aborts the migration: the source keeps (or
// resumes) running the VM and the target throws its copy away.
type Migration struct {
	ID     string `json:"id"`
	Source string `json:"source"`
	Target string `json:"target"`
	// SourceAddr is the IP address the source host's streams come from
	// (its registered address): the target's ends admit no other.
	SourceAddr string `json:"source_addr,omitempty"`

	Options MigrationOptions `json:"options"`

	// CPUs and MemoryMiB are the size the VM runs at on the source, which
	// the target's QEMU must have too (the spec's size may have changed
	// since the VM started: it applies from its next start). 0: the
	// spec's.
	CPUs      int   `json:"cpus,omitempty"`
	MemoryMiB int64 `json:"memory_mib,omitempty"`
	// VolumeSlots is the source QEMU's count of hot-plug slots, which
	// the target's must have.
	VolumeSlots int `json:"volume_slots,omitempty"`

	// Endpoint is where the target waits; set once it is ready.
	Endpoint  *MigrationEndpoint `json:"endpoint,omitempty"`
	StartedAt time.Time          `json:"started_at"`
}

// MigrationOptions are the tunables of one migration.
type MigrationOptions struct {
	Insecure       bool  `json:"insecure,omitempty"`        // stream in clear instead of TLS with the cluster's certificates
	DowntimeMs     int64 `json:"downtime_ms,omitempty"`     // longest final pause QEMU may plan for
	BandwidthBytes int64 `json:"bandwidth_bytes,omitempty"` // per second; 0 = unlimited
	AutoConverge   bool  `json:"auto_converge,omitempty"`   // throttle a guest that dirties memory faster than it moves
	// PostcopyAfterMs switches to post-copy when pre-copy has not
	// converged after this long; 0 = never.
	PostcopyAfterMs int64 `json:"postcopy_after_ms,omitempty"`
}

// MigrationEndpoint is where a migration target waits for its source.
type MigrationEndpoint struct {
	URI   string `json:"uri"`             // QEMU migration URI, tcp:IP:PORT
	NBD   string `json:"nbd,omitempty"`   // IP:PORT of the target's disk export, for local-pool disks
	Relay string `json:"relay,omitempty"` // IP:PORT where the target takes frames caught on the source
	// Error, instead of the above, says why the target cannot take the VM.
	Error string `json:"error,omitempty"`
}

// OnHost reports whether host has a part in the VM: its owner, or the
// target of its migration.
func (s VMSpec) OnHost(host string) bool {
	return s.Host == host || (s.Migration != nil && s.Migration.Target == host)
}

// MigrationProgress is what the source reports while it migrates.
type MigrationProgress struct {
	ID       string  `json:"id"`
	Phase    string  `json:"phase"` // disks, memory, postcopy, switchover, completed, failed
	Total    int64   `json:"total_bytes"`
	Moved    int64   `json:"transferred_bytes"`
	Left     int64   `json:"remaining_bytes"`
	DirtyBps int64   `json:"dirty_bytes_per_sec"`
	Mbps     float64 `json:"mbps"`
	DiskDone int64   `json:"disk_done_bytes,omitempty"`
	DiskLen  int64   `json:"disk_total_bytes,omitempty"`
	// ETA is the estimated time left, in milliseconds.
	ETAMs      int64  `json:"eta_ms"`
	TotalMs    int64  `json:"total_ms"`
	DowntimeMs int64  `json:"downtime_ms,omitempty"` // once completed
	Throttle   int    `json:"cpu_throttle_percent,omitempty"`
	Postcopy   bool   `json:"postcopy,omitempty"`
	Error      string `json:"error,omitempty"`
	Relayed    int    `json:"relayed_frames,omitempty"` // frames caught on the source after its last instant and sent on
	SwitchMs   int64  `json:"switch_ms,omitempty"`      // reported by the target (Phase "resumed")
	// StoppedAt is when the source stopped the guest for the last step;
	// ResumedAt when the target resumed it (Phase "resumed").
	StoppedAt time.Time `json:"stopped_at,omitzero"`
	ResumedAt time.Time `json:"resumed_at,omitzero"`
}

// Migration results.
const (
	MigrationRunning   = "running"
	MigrationCompleted = "completed"
	MigrationFailed    = "failed"
	MigrationCancelled = "cancelled"
)

// MigrationRecord is one migration as the API shows it: the one in flight
// and the history kept with each VM.
type MigrationRecord struct {
	ID         string    `json:"id"`
	VM         string    `json:"vm"`
	From       string    `json:"from"`
	To         string    `json:"to"`
	Result     string    `json:"result"` // running, completed, failed, cancelled
	Shared     bool      `json:"shared_storage"`
	Insecure   bool      `json:"insecure,omitempty"`
	StartedAt  time.Time `json:"started_at"`
	EndedAt    time.Time `json:"ended_at,omitzero"`
	TotalMs    int64     `json:"total_ms"`
	DowntimeMs int64     `json:"downtime_ms"`
	Bytes      int64     `json:"bytes"`
	DiskBytes  int64     `json:"disk_bytes,omitempty"`
	SwitchMs   int64     `json:"switch_ms,omitempty"` // on the target, from the stream's end to the VM running (commit included)
	ResumedAt  time.Time `json:"resumed_at,omitzero"` // when the target resumed the guest
	Relayed    int       `json:"relayed_frames,omitempty"`
	Postcopy   bool      `json:"postcopy,omitempty"` // it switched to post-copy
	// Superseded: a failover (or recover) took the VM away while it
	// migrated; the migration failed, whichever host the VM now runs on.
	Superseded bool               `json:"superseded,omitempty"`
	Error      string             `json:"error,omitempty"`
	Progress   *MigrationProgress `json:"progress,omitempty"` // while running
}

// MigrateRequest is the body of POST /v1/vms/{name}/migrate.
type MigrateRequest struct {
	To string `json:"to,omitempty"` // "" = the scheduler picks
	MigrationOptions
}
