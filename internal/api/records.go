package api

import (
	"reflect"
	"slices"
	"time"
)

// VMSpec is the desired state of a VM as kept in the store. The API writes
// it; the VM's host reads it and converges on it.
type VMSpec struct {
	Name         string     `json:"name"`
	ID           string     `json:"id"` // short random id; names may be reused, ids never
	Image        string     `json:"image"`
	Project      string     `json:"project,omitempty"` // "" for a VM made before projects: DefaultProject's
	CPUs         int        `json:"cpus"`
	CPUModel     string     `json:"cpu_model,omitempty"` // QEMU CPU model every host of the cluster can run
	MemoryMiB    int64      `json:"memory_mib"`
	DiskBytes    int64      `json:"disk_bytes"`
	Network      string     `json:"network"`
	Pool         string     `json:"pool"`
	Host         string     `json:"host"` // the owner: the only host that may run it
	HA           bool       `json:"ha,omitempty"`
	Priority     string     `json:"priority,omitempty"`      // failover order of an HA VM: high, medium, low; "" = medium
	AntiAffinity string     `json:"anti_affinity,omitempty"` // VMs of one group never share a host
	MAC          string     `json:"mac"`
	IP           string     `json:"ip"`
	UserData     string     `json:"user_data,omitempty"`
	Power        string     `json:"power"`                 // PowerRunning, PowerStopped, PowerPaused
	StopForce    bool       `json:"stop_force,omitempty"`  // the pending stop skips the ACPI grace period
	RestartGen   int        `json:"restart_gen,omitempty"` // bumped by restart; the host reboots the VM until it has seen it
	Deleting     bool       `json:"deleting,omitempty"`
	Migration    *Migration `json:"migration,omitempty"` // a live migration in progress
	CreatedAt    time.Time  `json:"created_at"`
	// UID is the user and group id the VM's QEMU runs as on every host,
	// unique in the cluster (see VMUIDMin); 0 for a VM made before QEMU
	// was confined, until its next start gives it one.
	UID int `json:"uid,omitempty"`
	// Volumes are the volumes attached to the VM, in the order attached.
	Volumes []VolumeRef `json:"volumes,omitempty"`
	// BootVolume, for a VM of a pool the cluster defines (iSCSI, RBD),
	// is the volume that holds its first disk, made with the VM.
	BootVolume *VolumeRef `json:"boot_volume,omitempty"`

	// StartedCPUs and StartedMemoryMiB are the size the VM was started
	// with, kept while it is not stopped and its size set (CPUs,
	// MemoryMiB) differs, which it takes at its next start: placement
	// holds the larger of the two on its host meanwhile. A size change
	// of a VM that is not stopped sets them; a start, stop or restart
	// clears them.
	StartedCPUs      int   `json:"started_cpus,omitempty"`
	StartedMemoryMiB int64 `json:"started_memory_mib,omitempty"`

	// Rev is the store revision this spec was read at. The store never
	// keeps it (it is the record's own revision); it travels to hosts.
	Rev int64 `json:"rev,omitempty"`
}

// The user and group ids of VMs' QEMU processes are taken from
// [VMUIDMin, VMUIDMin+VMUIDCount): above the ranges that systemd gives
// to system and regular users, dynamic users and containers
// (0x00080000-0x6FFFFFFF), and far above Debian's subordinate ids
// (from 100000, 65536 per user), below 2^31.
const (
	VMUIDMin   = 0x71000000
	VMUIDCount = 1 << 20
)

// VMStatus is what the VM's host reports about it.
type VMStatus struct {
	ID         string `json:"id"`
	Name       string `json:"name,omitempty"` // of the VM, so a report can be checked against its owner
	Host       string `json:"host"`
	State      string `json:"state"`
	PID        int    `json:"pid,omitempty"`
	Accel      string `json:"accel,omitempty"`
	Error      string `json:"error,omitempty"`
	RestartGen int    `json:"restart_gen,omitempty"`
	// ObservedRev is the spec revision the host last acted on; API calls
	// wait for it to reach the revision their change was written at.
	ObservedRev int64     `json:"observed_rev,omitempty"`
	StartedAt   time.Time `json:"started_at,omitzero"`
	UpdatedAt   time.Time `json:"updated_at"`
	// RunningCPUs and RunningMemoryMiB are the size the VM's QEMU runs
	// at, while one runs (the spec's size may have changed since it
	// started: it applies from the next start).
	RunningCPUs      int   `json:"running_cpus,omitempty"`
	RunningMemoryMiB int64 `json:"running_memory_mib,omitempty"`
	// Volumes are the ids of the volumes the VM's QEMU has attached now
	// (while it runs), and VolumeSlots its hot-plug slots for them (0: it
	// was started before volumes, and takes them at its next start).
	Volumes     []string `json:"volumes,omitempty"`
	VolumeSlots int      `json:"volume_slots,omitempty"`
}

// Equal reports whether s and o say the same.
func (s VMStatus) Equal(o VMStatus) bool { return reflect.DeepEqual(s, o) }

// MergeVM builds the API view of a VM from its spec and its host's status
// (status may be nil or stale, i.e. of an earlier VM with the same name).
func MergeVM(s VMSpec, st *VMStatus) VM {
	vm := VM{
		Name: s.Name, ID: s.ID, Project: ProjectOf(s.Project), Host: s.Host, IP: s.IP, MAC: s.MAC, Image: s.Image,
		CPUs: s.CPUs, CPUModel: s.CPUModel, MemoryMiB: s.MemoryMiB, DiskBytes: s.DiskBytes,
		Network: s.Network, Pool: s.Pool, HA: s.HA, Priority: EffectivePriority(s.HA, s.Priority),
		AntiAffinity: s.AntiAffinity, Power: s.Power,
		CreatedAt: s.CreatedAt, State: StateCreating,
	}
	vm.Disks = append(vm.Disks, Disk{Name: "disk0", Pool: s.Pool, SizeBytes: s.DiskBytes})
	for _, r := range s.Volumes {
		open := st != nil && st.ID == s.ID && slices.Contains(st.Volumes, r.ID)
		vm.Disks = append(vm.Disks, Disk{Name: r.Name, Pool: r.Pool, SizeBytes: r.SizeBytes, Volume: true, Open: open})
	}
	if st != nil && st.ID == s.ID {
		vm.State, vm.PID, vm.Accel, vm.Error = st.State, st.PID, st.Accel, st.Error
		vm.StartedAt, vm.UpdatedAt, vm.RestartGen = st.StartedAt, st.UpdatedAt, st.RestartGen
		vm.ObservedRev, vm.OpenVolumes, vm.VolumeSlots = st.ObservedRev, st.Volumes, st.VolumeSlots
		vm.RunningCPUs, vm.RunningMemoryMiB = st.RunningCPUs, st.RunningMemoryMiB
	}
	if m := s.Migration; m != nil {
		vm.State = StateMigrating
		vm.Migration = &MigrationRecord{ID: m.ID, VM: s.Name, From: m.Source, To: m.Target,
			Result: MigrationRunning, Insecure: m.Options.Insecure, StartedAt: m.StartedAt}
	}
	if s.Deleting {
		vm.State = StateDeleting
	}
	return vm
}

// SetRev records the revision a spec was read at.
func (s *VMSpec) SetRev(rev int64) { s.Rev = rev }

// SharedDisk reports whether the VM's disk is on a shared pool, which
// every host reaches (any pool but a host's own "local").
func (s VMSpec) SharedDisk() bool { return s.Pool != "local" }
