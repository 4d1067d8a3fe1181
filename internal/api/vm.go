package api

import "time"

// VM states as users see them.
const (
	StateCreating = "creating"
	StateStopped  = "stopped"
	StateStarting = "starting"
	StateRunning  = "running"
	StatePaused   = "paused"
	StateStopping = "stopping"
	StateDeleting = "deleting"
	StateFailed   = "failed"
	StateUnknown  = "unknown"
)

// Desired power states of a VM.
const (
	PowerRunning = "running"
	PowerStopped = "stopped"
	PowerPaused  = "paused"
)

// VM is a virtual machine as the API shows it: its spec merged with the
// status its host reports.
type VM struct {
	Name         string    `json:"name"`
	ID           string    `json:"id"`
	Project      string    `json:"project"`
	State        string    `json:"state"`
	Host         string    `json:"host"`
	IP           string    `json:"ip"`
	MAC          string    `json:"mac"`
	Image        string    `json:"image"`
	CPUs         int       `json:"cpus"`
	CPUModel     string    `json:"cpu_model,omitempty"`
	MemoryMiB    int64     `json:"memory_mib"`
	DiskBytes    int64     `json:"disk_bytes"`
	Network      string    `json:"network"`
	Pool         string    `json:"pool"`
	Disks        []Disk    `json:"disks"`
	OpenVolumes  []string  `json:"open_volumes,omitempty"` // ids of the volumes its running QEMU has open
	VolumeSlots  int       `json:"volume_slots,omitempty"` // its running QEMU's hot-plug slots for volumes
	HA           bool      `json:"ha"`
	Priority     string    `json:"priority,omitempty"` // failover priority of an HA VM (high, medium, low)
	AntiAffinity string    `json:"anti_affinity,omitempty"`
	Power        string    `json:"power"` // desired power state
	Accel        string    `json:"accel,omitempty"`
	PID          int       `json:"pid,omitempty"`
	Error        string    `json:"error,omitempty"`
	CreatedAt    time.Time `json:"created_at"`
	StartedAt    time.Time `json:"started_at,omitzero"`
	UpdatedAt    time.Time `json:"updated_at,omitzero"` // of the host's last report

	RestartGen  int   `json:"restart_gen,omitempty"`  // restarts the host has carried out
	ObservedRev int64 `json:"observed_rev,omitempty"` // spec revision the host has acted on

	// RunningCPUs and RunningMemoryMiB are the size its QEMU runs at,
	// while one runs; CPUs and MemoryMiB are the size set, which a
	// changed VM takes from its next start.
	RunningCPUs      int   `json:"running_cpus,omitempty"`
	RunningMemoryMiB int64 `json:"running_memory_mib,omitempty"`

	Migration  *MigrationRecord  `json:"migration,omitempty"`  // the live migration under way
	Migrations []MigrationRecord `json:"migrations,omitempty"` // the last ones, newest first
}

// CreateVMRequest is the body of POST /v1/vms.
type CreateVMRequest struct {
	Name         string `json:"name"`
	Image        string `json:"image"`
	Project      string `json:"project,omitempty"` // "" = the caller's project, or DefaultProject
	CPUs         int    `json:"cpus,omitempty"`
	CPU          string `json:"cpu,omitempty"`    // CPU model; "" = the cluster baseline, "host" = pass the host CPU through
	Memory       string `json:"memory,omitempty"` // e.g. "256M"; default 256M
	Disk         string `json:"disk,omitempty"`   // e.g. "2G"; default: the image's size
	Network      string `json:"network,omitempty"`
	Pool         string `json:"pool,omitempty"`
	Host         string `json:"host,omitempty"`
	HA           bool   `json:"ha,omitempty"`
	Priority     string `json:"priority,omitempty"` // failover priority, needs HA: high, medium, low; "" = medium
	AntiAffinity string `json:"anti_affinity,omitempty"`
	Start        bool   `json:"start,omitempty"`
	UserData     string `json:"user_data,omitempty"` // cloud-init user data, at most MaxUserData bytes
}

// MaxUserData bounds a VM's cloud-init user data (as cloud providers do:
// 16 KiB at AWS, 64 KiB here): it is stored in etcd with the VM, which
// every host and server reads.
const MaxUserData = 64 << 10

// StopRequest is the body of POST /v1/vms/{name}/stop.
type StopRequest struct {
	Force bool `json:"force,omitempty"`
}

// Host is a virtualization host as the API shows it.
type Host struct {
	Name          string      `json:"name"`
	ID            string      `json:"id,omitempty"`     // identity of the machine that claimed the name
	State         string      `json:"state"`            // up, down, maintenance
	Role          string      `json:"role,omitempty"`   // "" for a VM host; HostRoleStorage for a storage server, which runs no VM
	Portal        string      `json:"portal,omitempty"` // a storage server\'s iSCSI portal, IP:port
	Address       string      `json:"address,omitempty"`
	CPUModel      string      `json:"cpu_model,omitempty"`
	CPUFlags      []string    `json:"cpu_flags,omitempty"` // CPU features the host offers guests
	CPUs          int         `json:"cpus"`
	MemoryMiB     int64       `json:"memory_mib"`
	AllocatedMiB  int64       `json:"allocated_mib"`
	Accel         string      `json:"accel"` // kvm or tcg
	AccelReason   string      `json:"accel_reason,omitempty"`
	QEMUVersion   string      `json:"qemu_version,omitempty"`
	Pools         []string    `json:"pools,omitempty"`   // storage pools the host has
	Storage       []PoolSpace `json:"storage,omitempty"` // their space, as of the last heartbeat
	VMs           int         `json:"vms"`
	LastHeartbeat time.Time   `json:"last_heartbeat,omitzero"`
}

// HostRoleStorage is the role of a storage server's host record.
const HostRoleStorage = "storage"

// Host states.
const (
	HostUp          = "up"
	HostDown        = "down"
	HostMaintenance = "maintenance"
)

// Image is an entry of the image library.
type Image struct {
	Name      string    `json:"name"`
	Format    string    `json:"format"`     // of the stored disk: qcow2
	Source    string    `json:"source"`     // "built: tiny" or "imported: vmdk"
	SizeBytes int64     `json:"size_bytes"` // virtual size of the disk
	Kernel    bool      `json:"kernel"`     // boots with a kernel+initrd kept beside the disk
	Cmdline   string    `json:"cmdline,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

// Network is a virtual network: a bridge on each host and an IP pool.
type Network struct {
	Name    string `json:"name"`
	Bridge  string `json:"bridge"`
	Subnet  string `json:"subnet"`
	Gateway string `json:"gateway"`
}
