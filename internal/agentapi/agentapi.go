// Package agentapi is the contract between a host's agent and the control
// plane: what an agent reads (the VMs assigned to it, networks, images)
// and what it reports (liveness, VM status). Local implements it on the
// store for an agent inside the server's process; Remote implements it
// over HTTPS with mutual TLS for agents on other hosts, served by Handler.
package agentapi

import (
	"context"
	"time"

	"github.com/shoalvm/shoal/internal/api"
)

// Event is one step of the stream of VMs (and volumes) assigned to a
// host: first a snapshot of all of them, then each change.
type Event struct {
	Snapshot  bool          `json:"snapshot,omitempty"`
	Specs     []api.VMSpec  `json:"specs,omitempty"`     // with Snapshot
	Spec      *api.VMSpec   `json:"spec,omitempty"`      // created or changed, with Rev set
	Gone      string        `json:"gone,omitempty"`      // id of a VM no longer assigned here
	Volumes   []api.Volume  `json:"volumes,omitempty"`   // with Snapshot: those the host works on
	Volume    *api.Volume   `json:"volume,omitempty"`    // one it works on, created or changed, with Rev set
	Heartbeat time.Duration `json:"heartbeat,omitempty"` // keep-alive of the stream; ignore
}

// Source streams the VMs assigned to a host.
type Source interface {
	// WatchVMs calls fn with a snapshot, then with each change, until ctx
	// ends or the stream breaks; the caller then watches again.
	WatchVMs(ctx context.Context, host string, fn func(Event) error) error
}

// Reporter takes what a host tells the cluster.
type Reporter interface {
	// Register claims the host's name for the machine h.ID and marks it
	// alive for ttl; call it again within ttl to stay alive.
	Register(ctx context.Context, h api.Host, ttl time.Duration) error
	// Report publishes a VM's status.
	Report(ctx context.Context, st api.VMStatus) error
	// Status returns the last status reported for a VM id.
	Status(ctx context.Context, id string) (api.VMStatus, error)
	// GuestStopped records that the VM's guest powered off, unless its
	// spec changed since s (then errSuperseded-like api.ErrConflict).
	GuestStopped(ctx context.Context, s api.VMSpec) (api.VMSpec, error)
	// Removed deletes the records of a VM whose deletion the host finished.
	Removed(ctx context.Context, s api.VMSpec) error
	// MigrationReady tells where host, the target of s's migration, waits
	// for the incoming stream.
	MigrationReady(ctx context.Context, host string, s api.VMSpec, ep api.MigrationEndpoint) error
	// CommitMigration makes host, the target of s's migration, the VM's
	// owner, if the migration is still the current one (compare-and-swap);
	// otherwise api.ErrConflict and the target must discard its copy.
	CommitMigration(ctx context.Context, host string, s api.VMSpec) (api.VMSpec, error)
	// MigrationProgress publishes how the migration of the VM with this id
	// fares, from host, its source.
	MigrationProgress(ctx context.Context, host, vmID string, p api.MigrationProgress) error
	// ClaimStart checks, just before host launches the VM's QEMU, that
	// the VM is still host's and host's lease holds (store.ClaimStart);
	// api.ErrConflict otherwise, and the host must not start it.
	ClaimStart(ctx context.Context, host string, s api.VMSpec) error
	// Crashed records, as a vm.crashed event, that the VM crashed on
	// host (its QEMU died, or its guest panicked), and what host does
	// about it (what, e.g. "restarting it in 1s").
	Crashed(ctx context.Context, host string, s api.VMSpec, reason, what string, gaveUp bool) error
	// VolumeDone records what host made of the volume it was asked to
	// work on: v is the record as host read it (v.Rev) with the outcome
	// (state ready or failed, Error, DoneBytes); a finished deletion
	// removes the record. api.ErrConflict if the record changed
	// meanwhile (the host then gets the new one).
	VolumeDone(ctx context.Context, host string, v api.Volume) error
}

// Catalog answers what a host needs to build a VM.
type Catalog interface {
	Network(ctx context.Context, name string) (api.Network, error)
	Image(ctx context.Context, name string) (api.Image, error)
	// FetchImage makes the image's files present in dir (a no-op when
	// the agent shares the server's image library).
	FetchImage(ctx context.Context, name, dir string) error
	// Pools returns the pools the cluster defines (iSCSI, RBD), with the
	// secrets a host needs to open their volumes.
	Pools(ctx context.Context) ([]api.PoolConfig, error)
}

// ControlPlane is everything an agent needs from the cluster.
type ControlPlane interface {
	Source
	Reporter
	Catalog
}
