package api

import (
	"net"
	"strings"
	"time"
)

// Volume is a disk that lives apart from any VM, in a storage pool, and
// can be attached to one VM at a time (GET /v1/volumes/{name}).
type Volume struct {
	Name      string `json:"name"`
	ID        string `json:"id"` // names its file, LUN or image
	Project   string `json:"project"`
	Pool      string `json:"pool"`
	SizeBytes int64  `json:"size"`
	Image     string `json:"image,omitempty"` // what it was made from; "" = blank
	// Host is where its storage is worked on: the host of a local
	// pool's volume, or the one chosen to make or remove it.
	Host string `json:"host,omitempty"`
	VM   string `json:"vm,omitempty"`   // the VM it is attached to
	Boot bool   `json:"boot,omitempty"` // the first disk of VM, made and deleted with it
	// Access is the hosts whose initiators may open it, where the pool
	// checks that (a managed iSCSI pool's targets): the host of its VM.
	Access []string `json:"access,omitempty"`
	State  string   `json:"state"` // see VolumeCreating...
	// Done is the size the storage has reached; below SizeBytes while a
	// creation or a resize is under way.
	DoneBytes int64     `json:"done_size,omitempty"`
	Error     string    `json:"error,omitempty"`      // why the last operation failed
	ErrorKind string    `json:"error_kind,omitempty"` // of what kind (as the API names kinds)
	CreatedAt time.Time `json:"created_at,omitzero"`

	Rev int64 `json:"rev,omitempty"` // etcd mod revision when read; ignored when written
}

// Volume states.
const (
	VolumeCreating = "creating" // its storage is being made
	VolumeReady    = "ready"
	VolumeResizing = "resizing"
	VolumeDeleting = "deleting" // its storage is being removed; the record goes last
	VolumeFailed   = "failed"   // its creation failed (Error says why); delete it
)

// UsageOfVolume is what a volume takes of its project's quota (a VM's
// boot volume: nothing, its VM counts it).
func UsageOfVolume(v Volume) Usage {
	if v.Boot {
		return Usage{}
	}
	return Usage{DiskBytes: v.SizeBytes}
}

// CreateVolumeRequest is the body of POST /v1/volumes.
type CreateVolumeRequest struct {
	Name    string `json:"name"`
	Size    string `json:"size"`              // e.g. "10G"; with Image, default its size
	Pool    string `json:"pool,omitempty"`    // default "shared" if the cluster has it, else "local"
	Host    string `json:"host,omitempty"`    // the host of a local pool's volume
	Image   string `json:"image,omitempty"`   // start with this image's contents
	Project string `json:"project,omitempty"` // "" = the caller's, or DefaultProject
}

// ResizeVolumeRequest is the body of POST /v1/volumes/{name}/resize.
type ResizeVolumeRequest struct {
	Size string `json:"size"` // the new size, at least the current one
}

// PoolSpace is what a host sees of one of its pools (in its host record).
type PoolSpace struct {
	Name   string `json:"name"`
	Type   string `json:"type"` // dir, iscsi, rbd
	Shared bool   `json:"shared,omitempty"`
	// Manages: this host makes the pool's volumes (a storage server
	// serving its pool), whichever other hosts reach it.
	Manages   bool  `json:"manages,omitempty"`
	SizeBytes int64 `json:"size"`
	UsedBytes int64 `json:"used"`
	FreeBytes int64 `json:"free"`
}

// Pool is a storage pool as the API shows it (GET /v1/pools): its space
// as the hosts that reach it last reported it, and those hosts.
type Pool struct {
	Name      string   `json:"name"`
	Type      string   `json:"type"`
	Shared    bool     `json:"shared"` // every host reaching it sees the same volumes
	SizeBytes int64    `json:"size"`
	UsedBytes int64    `json:"used"`
	FreeBytes int64    `json:"free"`
	Hosts     []string `json:"hosts"`
	Volumes   int      `json:"volumes"`
}

// VolumeRef is a volume as the spec of the VM it is attached to keeps
// it: what the VM's host needs to open it.
type VolumeRef struct {
	Name      string `json:"name"`
	ID        string `json:"id"`
	Pool      string `json:"pool"`
	SizeBytes int64  `json:"size"`
	// Slot is the hot-plug slot of its disk, chosen at attach and kept,
	// so that a migration's target has the disk where the source has it.
	Slot int `json:"slot"`
}

// Disk is one disk of a VM as the API shows it (VM.Disks): the boot
// disk, "disk0", then each attached volume.
type Disk struct {
	Name      string `json:"name"`
	Pool      string `json:"pool"`
	SizeBytes int64  `json:"size"`
	Volume    bool   `json:"volume,omitempty"` // an attached volume (else the boot disk)
	Open      bool   `json:"open,omitempty"`   // a volume the VM's running QEMU has (else at its next start)
}

// AttachRequest is the body of POST /v1/vms/{name}/attach and /detach.
type AttachRequest struct {
	Volume string `json:"volume"`
}

// VolumeSlots number the hot-plug slots (PCIe root ports) a VM's QEMU
// has for volumes' disks (see qemu.Config.VolumeSlots): a VM started
// now has VolumeSlotLast of them.
const (
	VolumeSlotFirst = 1
	VolumeSlotLast  = 16
)

// FreeSlot is the lowest volume slot that none of refs takes; 0 if none
// is left.
func FreeSlot(refs []VolumeRef) int {
	for slot := VolumeSlotFirst; slot <= VolumeSlotLast; slot++ {
		taken := false
		for _, r := range refs {
			taken = taken || r.Slot == slot
		}
		if !taken {
			return slot
		}
	}
	return 0
}

// PoolConfig is a storage pool that the cluster defines (POST
// /v1/pools), as opposed to a directory a host is started with: an iSCSI
// target, on a storage server Shoal manages (Server) or one it adopts
// (Portal and Target), or a Ceph RBD pool. Secrets are write-only: the
// API never shows them; hosts get them to open volumes.
type PoolConfig struct {
	Name string `json:"name"`
	Type string `json:"type"` // PoolISCSI or PoolRBD

	Server     string `json:"server,omitempty"` // iSCSI: the storage server (a host of role storage) that serves it
	Portal     string `json:"portal,omitempty"` // iSCSI: IP:port; a managed pool's is its server's
	Target     string `json:"target,omitempty"` // iSCSI, adopted: the target's IQN
	CHAPUser   string `json:"chap_user,omitempty"`
	CHAPSecret string `json:"chap_secret,omitempty"`

	Monitors []string `json:"monitors,omitempty"` // RBD: monitor addresses
	RBDPool  string   `json:"rbd_pool,omitempty"` // RBD: the Ceph pool
	User     string   `json:"user,omitempty"`     // RBD: the Ceph client (without "client.")
	Key      string   `json:"key,omitempty"`      // RBD: its key

	CreatedAt time.Time `json:"created_at,omitzero"`
}

// Pool types.
const (
	PoolDir   = "dir"
	PoolISCSI = "iscsi"
	PoolRBD   = "rbd"
)

// Public is c without its secrets, as the API shows it.
func (c PoolConfig) Public() PoolConfig {
	c.CHAPSecret, c.Key = "", ""
	return c
}

// Check says whether c is a pool definition that can work, in one line
// of what is wrong. It is pure.
func (c PoolConfig) Check() error {
	if err := ValidateName("pool", c.Name); err != nil {
		return err
	}
	switch c.Type {
	case PoolISCSI:
		managed := c.Server != ""
		if managed == (c.Portal != "" || c.Target != "") {
			return Errorf(ErrInvalid, "an iscsi pool is either Shoal's storage server's (--server NAME) or an existing target (--portal IP:PORT --target IQN)")
		}
		if !managed {
			if _, _, err := net.SplitHostPort(c.Portal); err != nil {
				return Errorf(ErrInvalid, "portal %q: want IP:PORT, e.g. 192.0.2.10:3260", c.Portal)
			}
			if !strings.HasPrefix(c.Target, "iqn.") || strings.ContainsAny(c.Target, " \t\n/") {
				return Errorf(ErrInvalid, "target %q: want an iSCSI name, e.g. iqn.2003-01.org.example:disks", c.Target)
			}
		}
		if (c.CHAPUser == "") != (c.CHAPSecret == "") {
			return Errorf(ErrInvalid, "CHAP needs both a user and a secret (--chap-user, --chap-secret-file)")
		}
		if len(c.CHAPSecret) > 0 && (len(c.CHAPSecret) < 12 || len(c.CHAPSecret) > 255) {
			return Errorf(ErrInvalid, "a CHAP secret has 12 to 255 characters (RFC 3720 wants at least 12); this one has %d", len(c.CHAPSecret))
		}
		if strings.ContainsAny(c.CHAPUser, ",= \t\n") {
			return Errorf(ErrInvalid, "CHAP user %q: no ',', '=' or spaces", c.CHAPUser)
		}
	case PoolRBD:
		switch {
		case len(c.Monitors) == 0:
			return Errorf(ErrInvalid, "an rbd pool needs its Ceph monitors (--monitors IP:PORT,...)")
		case c.RBDPool == "":
			return Errorf(ErrInvalid, "an rbd pool needs the Ceph pool of its images (--rbd-pool NAME)")
		case c.User == "" || c.Key == "":
			return Errorf(ErrInvalid, "an rbd pool needs a Ceph user and its key (--user U --keyring FILE)")
		}
	default:
		return Errorf(ErrInvalid, "pool type %q: use iscsi or rbd (directory pools are given to hosts when they start)", c.Type)
	}
	return nil
}
