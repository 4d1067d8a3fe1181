// Package qemu builds QEMU command lines, launches QEMU as a daemon that
// outlives its launcher, and reattaches to a running QEMU from its state
// directory.
//
// Each VM has a state directory (Config.Dir) holding the files below; the
// directory alone is enough to find and drive the VM again after the agent
// restarts (DESIGN.md, principle 4):
//
//	qmp.sock      QMP control socket (see package qmp)
//	console.sock  serial console, a unix socket server; one client at a time
//	console.log   what the guest wrote to the serial console (appended;
//	              capped, the older part kept as console.log.1: CapLog)
//	qemu.pid      QEMU's pid, written by QEMU (-pidfile)
//	qemu.log      QEMU's own messages (-D and stderr); the previous run's
//	              log is kept as qemu.log.1
//	launch.lock   flock that serializes launches for the directory
//
// Unix socket paths are limited to 107 bytes, so Dir may be at most
// MaxDirLen bytes long.
//
// A QEMU is identified by its command line: a process is "ours" only if
// /proc/<pid>/cmdline names this directory's qmp.sock. Nothing here signals
// a pid without that check, and signals go through a pidfd where the kernel
// has them, so a reused pid is never hit.
package qemu

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// Names of the files in a VM's state directory.
const (
	QMPSocket     = "qmp.sock"
	ConsoleSocket = "console.sock"
	ConsoleLog    = "console.log"
	PidFile       = "qemu.pid"
	LogFile       = "qemu.log"
	LaunchLock    = "launch.lock"
)

// maxSocketPath is the longest unix socket path (sun_path less its NUL).
const maxSocketPath = 107

// MaxDirLen is the longest state directory path that keeps every socket
// path within the unix socket limit.
const MaxDirLen = maxSocketPath - len("/"+ConsoleSocket)

// firstTapFD is the fd number the first NIC's tap has in QEMU: ExtraFiles
// start after stdin, stdout and stderr.
const firstTapFD = 3

// Disk is a virtio-blk disk: a format layer (Format) over exactly one
// source, a file (Path), an iSCSI LUN (ISCSI) or a Ceph RBD image (RBD).
// See disk.go for sources, secrets and the PCI layout.
type Disk struct {
	Path  string // absolute path of an image file
	ISCSI *ISCSI // or a LUN, through QEMU's libiscsi initiator
	RBD   *RBD   // or a Ceph RBD image

	Format   string // "raw" (default when empty), "qcow2", ...
	ReadOnly bool
	Serial   string // optional; at most 20 of [A-Za-z0-9._-]

	// Node is the block node name: a letter then up to 26 of
	// [A-Za-z0-9_.-]; "disk<index>" when empty. The device's id is
	// "virtio-" + Node, a secret's "sec-" + Node. Volumes use
	// "vol-<id>" (device "virtio-vol-<id>").
	Node string
	// Slot is the hot-plug slot the disk sits in, 1 to the VM's
	// Config.VolumeSlots; 0 = none, placed on pcie.0 by QEMU in order
	// (the boot disk and the seed; such a disk cannot be detached).
	Slot int
}

// NIC is a virtio-net NIC on a tap device the caller already opened.
type NIC struct {
	MAC   string   // required, e.g. "52:54:00:12:34:56"
	TapFD *os.File // open tap fd; passed to QEMU as fd 3+index
	ID    string   // QEMU netdev id; "net<index>" when empty
}

// Config describes one VM's QEMU process.
type Config struct {
	Name string // VM name; shown in ps as shoal-NAME
	UUID string // optional SMBIOS UUID

	Dir string // state directory, absolute, at most MaxDirLen bytes

	Accel     string // "kvm" or "tcg"
	CPUs      int
	CPUModel  string // QEMU -cpu model; "" = host under KVM, max under TCG
	MemoryMiB int

	// Optional direct kernel boot.
	Kernel, Initrd, Cmdline string

	Disks []Disk // the first is the boot disk
	NICs  []NIC

	// VolumeSlots is how many hot-plug slots (PCIe root ports) the VM
	// has, 0 to MaxVolumeSlots; disks with a Slot sit in them. It is
	// fixed for the life of a QEMU, and a migration target must have
	// the source's (Process.VolumeSlots reads it). 0 = none, the
	// layout of VMs from before volumes.
	VolumeSlots int

	Paused bool // start with the CPUs stopped (-S)

	// Incoming starts QEMU as a live-migration target (-incoming defer):
	// it waits, status "inmigrate", until Process.MigrateIncoming names
	// the URI to receive on. The other settings must match the source's.
	Incoming bool

	// PreallocThreads, if above zero, has QEMU allocate and zero all of
	// the guest's memory at launch, with that many threads, instead of
	// page by page as the guest (or a migration stream) first writes it.
	// The memory then comes from a backend named as QEMU's default one
	// ("pc.ram"), so a migration between a QEMU with and one without it
	// still matches.
	PreallocThreads int

	// User, if set, is whom QEMU runs as (see Launch); nil = the caller.
	User *User
}

// maxPreallocThreads bounds Config.PreallocThreads.
const maxPreallocThreads = 64

var (
	uuidRE   = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
	serialRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,20}$`)
	idRE     = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_-]{0,30}$`)
	formatRE = regexp.MustCompile(`^[a-z0-9]+$`)
)

// ErrInvalidConfig is wrapped by every error Args returns.
var ErrInvalidConfig = errors.New("invalid qemu config")

func invalid(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(format, a...))
}

// escapeOpt doubles commas, QEMU's escape inside "key=value,..." options.
func escapeOpt(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// socketArg is the -chardev value of the QMP socket. It is also how a
// process is recognised as the QEMU of dir (see isOurQEMU).
func qmpChardev(dir string) string {
	return "socket,id=qmp,path=" + escapeOpt(filepath.Join(dir, QMPSocket)) + ",server=on,wait=off"
}

// tcgMemoryPadKiB is added to the memory of software-emulated guests.
// QEMU before 9.0 syncs the dirty bitmap of a RAM block whose size is a
// multiple of 256 KiB by a fast path that forgets to reset TCG's TLB, so
// guest stores through the TLB are not seen as dirty and a live
// migration loses them (QEMU commit "physmem: Fix migration dirty bitmap
// coherency with TCG memory access", 2024): the guest's kernel crashes
// on its target now and then. A size off that multiple takes the slow
// path, which resets the TLB. QEMU rounds -m to 8 KiB.
const tcgMemoryPadKiB = 8

// memoryArg is the -m value of cfg: MiB, or for TCG KiB with the pad.
func memoryArg(cfg Config) string {
	if cfg.Accel == "tcg" {
		return strconv.Itoa(cfg.MemoryMiB*1024+tcgMemoryPadKiB) + "K"
	}
	return strconv.Itoa(cfg.MemoryMiB)
}

// ramBackendID is the id QEMU gives the q35 machine's default memory
// backend. The migration stream names guest memory by it.
const ramBackendID = "pc.ram"

// machineArg is the -machine value of cfg.
func machineArg(cfg Config) string {
	if cfg.PreallocThreads > 0 {
		return "q35,memory-backend=" + ramBackendID
	}
	return "q35"
}

// Args returns QEMU's argv (without the binary) for cfg, or an error
// wrapping ErrInvalidConfig. It does no I/O.
func Args(cfg Config) ([]string, error) {
	if err := validate(&cfg); err != nil {
		return nil, err
	}
	dir := cfg.Dir
	path := func(name string) string { return filepath.Join(dir, name) }

	cpu := cfg.CPUModel
	switch {
	case cpu == "" && cfg.Accel == "kvm":
		cpu = "host"
	case cpu == "" || cpu == "host" && cfg.Accel != "kvm":
		cpu = "max" // software emulation has no host CPU to pass through
	}
	name := escapeOpt(cfg.Name)
	a := []string{
		"-name", "guest=" + name + ",process=shoal-" + name + ",debug-threads=on",
	}
	if cfg.UUID != "" {
		a = append(a, "-uuid", cfg.UUID)
	}
	a = append(a,
		"-nodefaults", "-no-user-config", "-display", "none",
		"-sandbox", sandboxOpts,
		"-machine", machineArg(cfg),
		"-accel", cfg.Accel,
		"-cpu", cpu,
		"-smp", strconv.Itoa(cfg.CPUs),
		"-m", memoryArg(cfg),
	)
	if cfg.PreallocThreads > 0 {
		a = append(a, "-object", fmt.Sprintf("memory-backend-ram,id=%s,size=%s,prealloc=on,prealloc-threads=%d",
			ramBackendID, memoryArg(cfg), cfg.PreallocThreads))
	}
	a = append(a,
		"-chardev", qmpChardev(dir),
		"-mon", "chardev=qmp,mode=control",
		"-chardev", "socket,id=ser0,path="+escapeOpt(path(ConsoleSocket))+
			",server=on,wait=off,logfile="+escapeOpt(path(ConsoleLog))+",logappend=on",
		"-serial", "chardev:ser0",
		"-pidfile", path(PidFile),
		"-daemonize",
		"-D", path(LogFile),
		"-msg", "timestamp=on",
	)
	if cfg.Kernel != "" {
		a = append(a, "-kernel", cfg.Kernel)
		if cfg.Initrd != "" {
			a = append(a, "-initrd", cfg.Initrd)
		}
		if cfg.Cmdline != "" {
			a = append(a, "-append", cfg.Cmdline)
		}
	}
	a = append(a, slotPorts(cfg.VolumeSlots)...)
	for i, d := range cfg.Disks {
		da, err := diskArgs(d, i == 0)
		if err != nil {
			return nil, invalid("disk %d (%s): %v", i, d.Node, err)
		}
		a = append(a, da...)
	}
	for i, n := range cfg.NICs {
		a = append(a,
			"-netdev", fmt.Sprintf("tap,id=%s,fd=%d", n.ID, firstTapFD+i),
			"-device", fmt.Sprintf("virtio-net-pci,netdev=%s,mac=%s,id=%s-dev", n.ID, n.MAC, n.ID),
		)
	}
	// A guest kernel that panics tells QEMU through pvpanic (ISA, at
	// port 0x505: it takes no PCI slot, so the guest's other devices keep
	// their addresses), and QEMU then exits with a SHUTDOWN reason of
	// guest-panic instead of the guest rebooting or hanging unseen; see
	// exit.go. Linux drives it with pvpanic-mmio (ACPI QEMU0001).
	a = append(a, "-device", "pvpanic", "-action", "panic=exit-failure")
	if cfg.Paused {
		a = append(a, "-S")
	}
	if cfg.Incoming {
		a = append(a, "-incoming", "defer")
	}
	return a, nil
}

// validate checks cfg and fills defaults (disk format, NIC ids) in place.
func validate(cfg *Config) error {
	if cfg.Name == "" {
		return invalid("name is empty")
	}
	if strings.IndexFunc(cfg.Name, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0 {
		return invalid("name %q has control characters", cfg.Name)
	}
	if cfg.UUID != "" && !uuidRE.MatchString(cfg.UUID) {
		return invalid("uuid %q is not of the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", cfg.UUID)
	}
	if err := checkDir(cfg.Dir); err != nil {
		return err
	}
	switch cfg.Accel {
	case "kvm", "tcg":
	default:
		return invalid("accel %q: want \"kvm\" or \"tcg\"", cfg.Accel)
	}
	if cfg.CPUs < 1 || cfg.CPUs > 255 {
		return invalid("cpus %d: want 1 to 255", cfg.CPUs)
	}
	if cfg.MemoryMiB < 16 {
		return invalid("memory %d MiB: want at least 16", cfg.MemoryMiB)
	}
	if cfg.PreallocThreads < 0 || cfg.PreallocThreads > maxPreallocThreads {
		return invalid("prealloc threads %d: want 0 to %d", cfg.PreallocThreads, maxPreallocThreads)
	}
	if cfg.Kernel == "" && (cfg.Initrd != "" || cfg.Cmdline != "") {
		return invalid("initrd or cmdline given without a kernel")
	}
	if cfg.VolumeSlots < 0 || cfg.VolumeSlots > MaxVolumeSlots {
		return invalid("volume slots %d: want 0 to %d", cfg.VolumeSlots, MaxVolumeSlots)
	}
	disks := make([]Disk, len(cfg.Disks))
	nodes, slots := map[string]bool{}, map[int]string{}
	auto := len(cfg.NICs)
	for i, d := range cfg.Disks {
		d, err := checkDisk(d, i, cfg.VolumeSlots)
		if err != nil {
			return invalid("disk %d: %v", i, err)
		}
		if nodes[d.Node] {
			return invalid("disk %d: node name %q used twice", i, d.Node)
		}
		nodes[d.Node] = true
		if d.Slot == 0 {
			auto++
		} else if other, ok := slots[d.Slot]; ok {
			return invalid("disk %d: slot %d already holds %s", i, d.Slot, other)
		} else {
			slots[d.Slot] = d.Node
		}
		disks[i] = d
	}
	if cfg.VolumeSlots > 0 && auto > maxAutoDevices {
		return invalid("%d disks without a slot and NICs: at most %d with hot-plug slots", auto, maxAutoDevices)
	}
	cfg.Disks = disks
	nics := make([]NIC, len(cfg.NICs))
	seen := map[string]bool{}
	for i, n := range cfg.NICs {
		mac, err := net.ParseMAC(n.MAC)
		if err != nil || len(mac) != 6 {
			return invalid("nic %d: MAC %q is not a 6-byte MAC address", i, n.MAC)
		}
		if mac[0]&1 != 0 {
			return invalid("nic %d: MAC %s is a multicast address", i, n.MAC)
		}
		n.MAC = mac.String()
		if n.ID == "" {
			n.ID = fmt.Sprintf("net%d", i)
		}
		if !idRE.MatchString(n.ID) {
			return invalid("nic %d: id %q: want a letter then up to 30 of A-Z a-z 0-9 _ -", i, n.ID)
		}
		if seen[n.ID] {
			return invalid("nic %d: id %q used twice", i, n.ID)
		}
		seen[n.ID] = true
		nics[i] = n
	}
	cfg.NICs = nics
	return nil
}

func checkDir(dir string) error {
	if dir == "" || !filepath.IsAbs(dir) {
		return invalid("state dir %q is not an absolute path", dir)
	}
	if filepath.Clean(dir) != dir {
		return invalid("state dir %q is not clean (want %q)", dir, filepath.Clean(dir))
	}
	if len(dir) > MaxDirLen {
		return invalid("state dir %q is %d bytes long; unix socket paths allow at most %d for the dir: use a shorter state dir",
			dir, len(dir), MaxDirLen)
	}
	return nil
}
