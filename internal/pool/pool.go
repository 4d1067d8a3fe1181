// Package pool is what every kind of storage pool offers Shoal: a small
// driver interface, implemented by one package per pool type (pool/dir
// for local and shared directories, pool/iscsi for LUNs of an iSCSI
// target, pool/rbd for Ceph images). A driver runs where it can reach
// the pool's storage: on a host, or on the storage server. Controllers
// use only this interface, so that a new pool type touches none of them.
package pool

import "context"

// Volume is what a driver needs to know of a volume. Drivers name files,
// LUNs and images from the id, never from the user's name for it.
type Volume struct {
	ID        string // unique in the cluster, [0-9a-f]
	SizeBytes int64  // virtual size
	// Base, on creation only, is a qcow2 image (a path the driver can
	// read) whose contents the new volume starts with; "" = blank.
	Base string
}

// Capacity is a pool's space, in bytes.
type Capacity struct {
	SizeBytes int64 `json:"size"`
	UsedBytes int64 `json:"used"`
	FreeBytes int64 `json:"free"`
}

// Driver manages a pool's volumes. Every method is idempotent, so that a
// controller that crashed mid-way simply calls it again.
type Driver interface {
	// Create makes v, or finds it made with the same size. Without the
	// space it fails with api.ErrCapacity, naming the free space.
	Create(ctx context.Context, v Volume) error
	// Delete removes the volume of id; an absent volume is no error.
	Delete(ctx context.Context, id string) error
	// Resize grows the volume of id to size bytes (never shrinks it).
	Resize(ctx context.Context, id string, size int64) error
	// Capacity says how much space the pool has and uses.
	Capacity(ctx context.Context) (Capacity, error)
}

// Fencer is a driver that can take a host's access to volumes away at
// the storage itself (an iSCSI access list, a Ceph blocklist), so that a
// fenced host cannot write them even if its own watchdog failed.
type Fencer interface {
	// Fence removes host's access to the volumes ids and ends the
	// sessions it has on them; Unfence gives the access back.
	Fence(ctx context.Context, host string, ids []string) error
	Unfence(ctx context.Context, host string, ids []string) error
}
