package api

import "time"

// Event is one entry of the cluster's event log (GET /v1/events): what
// happened, to which VM and host, in one line that, for a failure, says
// what to do. Events are kept for a while (a week, and at most the last
// thousand or so), oldest first in listings.
type Event struct {
	// ID sorts in the order the events were recorded; pass the last one
	// seen as ?after= to get only newer events.
	ID       string    `json:"id"`
	Time     time.Time `json:"time"`
	Kind     string    `json:"kind"`     // e.g. migration.completed, drain.vm
	Severity string    `json:"severity"` // info, warning, error
	VM       string    `json:"vm,omitempty"`
	Host     string    `json:"host,omitempty"`
	// To is the other host of an event that moves a VM (the target).
	To      string `json:"to,omitempty"`
	Message string `json:"message"`
	// Requestor is the user whose call made it happen, if one did.
	Requestor string `json:"requestor,omitempty"`
	// Figures are the event's measurements, e.g. total_ms, downtime_ms,
	// bytes of a migration; counts of a drain.
	Figures map[string]int64 `json:"figures,omitempty"`
}

// Severities of events.
const (
	SeverityInfo    = "info"
	SeverityWarning = "warning"
	SeverityError   = "error"
)

// Kinds of events.
const (
	EventMigrationStarted   = "migration.started"
	EventMigrationCompleted = "migration.completed"
	EventMigrationFailed    = "migration.failed"
	EventMigrationCancelled = "migration.cancelled"
	EventDrainStarted       = "drain.started"
	EventDrainVM            = "drain.vm" // one VM of a drain has its final result
	EventDrainDone          = "drain.done"
	EventHostResumed        = "host.resumed"
	// Failover (internal/ha names the same kinds).
	EventHostLost         = "host.lost"          // its lease expired
	EventHostFenced       = "host.fenced"        // its HA VMs are surely dead
	EventHostBack         = "host.back"          // it renewed its lease again
	EventVMRestart        = "vm.restart"         // an HA VM is given to a survivor
	EventVMRestarted      = "vm.restarted"       // and runs there
	EventVMWaiting        = "vm.waiting"         // no host can take it now
	EventVMStranded       = "vm.stranded"        // it cannot run elsewhere
	EventVMFailoverFailed = "vm.failover_failed" // restarts kept failing
	EventVMRecovered      = "vm.recovered"       // the user moved it off a failed host
	EventVMCrashed        = "vm.crashed"         // its QEMU died or its guest panicked (restarted in place, or given up)
	EventServerRemoved    = "server.removed"     // a server replica left the cluster for good
	EventHostRemoved      = "host.removed"       // a host left the cluster for good; its certificate is revoked
	// Lifecycle of a VM as users asked for it (with Requestor).
	EventVMCreated        = "vm.created"
	EventVMStarted        = "vm.started"
	EventVMStopped        = "vm.stopped"
	EventVMChanged        = "vm.changed"
	EventVMDeleted        = "vm.deleted"
	EventVMPower          = "vm.power"           // restarted, paused or resumed (the message says which)
	EventEtcdAlarm        = "etcd.alarm"         // etcd raised an alarm (NOSPACE: it refuses writes; CORRUPT)
	EventEtcdAlarmCleared = "etcd.alarm_cleared" // and it is cleared
)

// Involves reports whether the event concerns host (as its host or as
// the target of a move).
func (e Event) Involves(host string) bool { return e.Host == host || e.To == host }
