package qemu

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// Disk sources and where disks sit on the guest's PCI bus.
//
// A Disk is a format layer (raw or qcow2) over one protocol node: a file
// (Disk.Path), an iSCSI LUN reached by QEMU's own initiator, libiscsi
// (Disk.ISCSI), or a Ceph RBD image (Disk.RBD). The iSCSI and RBD drivers
// are modules of Debian's qemu-block-extra.
//
// PCI layout. Shoal's VMs use the q35 machine, whose root bus pcie.0
// cannot hot-plug. Devices with no slot (Disk.Slot 0: the boot disk, the
// cloud-init seed) and the NICs are placed by QEMU on pcie.0 in the
// order of the command line, from 00:01.0 up: a VM's boot disk is at
// 00:01.0, its seed at 00:02.0 and its NIC at 00:03.0, as they were
// before volumes existed. A VM launched with Config.VolumeSlots N > 0
// also has N PCIe root ports, the hot-plug slots, packed eight to a PCI
// slot from 00:10.0 (slot n at 00:(0x10+(n-1)/8).((n-1)%8), QEMU id
// "vslot<n>"), a range the automatically placed devices never reach (at
// most 15 of them are allowed then). A disk with Slot n sits alone behind
// root port n, whether it was on the command line or hot-plugged, so a
// migration target launched with every attached disk on its command line
// has the very devices, at the very addresses, of a source where some
// were hot-plugged. A VM launched with VolumeSlots 0 (every VM from
// before volumes) has no root ports and its argv is unchanged: it keeps
// migrating to upgraded hosts, and gets hot-plug slots at its next start.
//
// The guest sees hot-plugged disks come and go through ACPI PCI hotplug
// (on by default on QEMU 7.2's q35 for root ports; Debian's kernels have
// acpiphp built in) and a grown disk through virtio's config change.

// MaxVolumeSlots bounds Config.VolumeSlots: 64 root ports fill PCI slots
// 0x10 to 0x17.
const MaxVolumeSlots = 64

// DefaultVolumeSlots is a VolumeSlots for new VMs: as many hot-plug
// disks as Proxmox allows virtio disks. An empty slot costs a PCI bus
// number and a memory window, nothing while the VM runs.
const DefaultVolumeSlots = 16

// VolumeNode is the block node name of the volume id ("vol-<id>"; its
// device is "virtio-vol-<id>"). An id of up to 23 characters fits.
func VolumeNode(id string) string { return "vol-" + id }

// VolumeSerial is the disk serial of the volume id, which the guest
// reads in /sys/block/vdX/serial: "v" and the first 19 characters of
// the id (a serial holds 20).
func VolumeSerial(id string) string { return "v" + id[:min(len(id), 19)] }

// SecretFile is where, in the VM's state dir, the caller keeps the
// secret of the disk node for QEMU to read (Secret.File).
func SecretFile(dir, node string) string { return filepath.Join(dir, secretID(node)+".secret") }

// firstSlotPCI is the PCI slot on pcie.0 of hot-plug slot 1.
const firstSlotPCI = 0x10

// maxAutoDevices is how many devices QEMU may place on pcie.0 by itself
// (disks without a slot, NICs) when the VM has hot-plug slots: 00:01 to
// 00:0f, below the first root port.
const maxAutoDevices = firstSlotPCI - 1

// SlotID is the QEMU id of the root port of hot-plug slot n (1-based).
func SlotID(n int) string { return "vslot" + strconv.Itoa(n) }

// SlotAddr is the PCI address on pcie.0 of the root port of hot-plug
// slot n (1-based), as "00:10.0".
func SlotAddr(n int) string {
	return fmt.Sprintf("00:%02x.%d", firstSlotPCI+(n-1)/8, (n-1)%8)
}

// slotPorts returns the -device arguments of n root ports.
func slotPorts(n int) []string {
	var a []string
	for i := 1; i <= n; i++ {
		dev := fmt.Sprintf("pcie-root-port,id=%s,bus=pcie.0,addr=0x%x.%d", SlotID(i), firstSlotPCI+(i-1)/8, (i-1)%8)
		if (i-1)%8 == 0 {
			dev += ",multifunction=on"
		}
		// A chassis number of its own per port (QEMU wants the pair
		// chassis, slot unique); no I/O window reserved: virtio devices
		// behind a PCIe port have none, and 64 KiB of I/O space would
		// not cover sixteen ports.
		dev += fmt.Sprintf(",chassis=%d,port=%d,io-reserve=0", i, i)
		a = append(a, "-device", dev)
	}
	return a
}

// SecretValue is a password or key. It prints as "(secret)" with fmt and
// slog, so a Disk may be logged without giving it away.
type SecretValue []byte

func (SecretValue) String() string               { return "(secret)" }
func (SecretValue) GoString() string             { return "(secret)" }
func (SecretValue) LogValue() slog.Value         { return slog.StringValue("(secret)") }
func (s SecretValue) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(s.String())) }

// MarshalJSON refuses: a secret is kept in no JSON document.
func (SecretValue) MarshalJSON() ([]byte, error) {
	return nil, errors.New("qemu: a secret value is not marshalled")
}

// Secret is how QEMU gets the CHAP password or Ceph key of a disk. It is
// never put on QEMU's command line nor logged. QEMU holds it as a secret
// object with id "sec-" + the disk's node name.
//
// At launch (Args) QEMU reads File: the caller writes the secret there,
// exactly its bytes (no trailing newline; a Ceph key as the base64 text
// of its keyring), in the VM's state dir, mode
// 0600, owned by the VM's QEMU user (Config.User), through no link, as
// internal/agent gives that user its disk and seed (giveFile); and
// removes it when the disk is detached. Args checks only that File is
// an absolute path.
//
// When hot-plugging (Process.AttachDisk), Value, if set, goes to QEMU
// over QMP (object-add, base64), and no file is needed; without Value,
// QEMU reads File as at launch. A migration target is launched, so it
// needs File.
type Secret struct {
	File  string
	Value SecretValue
}

func (s Secret) empty() bool { return s.File == "" && len(s.Value) == 0 }

// ISCSI is a LUN reached through QEMU's libiscsi initiator.
type ISCSI struct {
	Portal        string // "host:port" or "host" (port 3260); "[v6]:port" for IPv6
	Target        string // the target's IQN
	LUN           int
	InitiatorName string // this host's IQN, which the target's access list names
	User          string // CHAP user; "" = no CHAP
	Secret        Secret // CHAP password, with User
	// Timeout, in seconds, fails a request the target has not answered
	// in time (an I/O error for the guest) rather than retrying it for
	// ever; 0 = libiscsi's default, no timeout.
	Timeout int
}

// RBD is a Ceph RBD image.
type RBD struct {
	Monitors []string // "host:port" or "host" (port 6789), at least one
	Pool     string
	Image    string
	User     string // cephx id without "client.", e.g. "shoal"; "" = librados' default
	Secret   Secret // the cephx key as a keyring has it, base64 text (no newline); none = no cephx
	// Conf is an optional ceph.conf for librados' other settings (for
	// example client_mount_timeout, 300 s by default: blockdev-add
	// blocks QEMU that long on unreachable monitors); QEMU's user must
	// be able to read it. Without it librados tries /etc/ceph/ceph.conf
	// and goes on without one.
	Conf string
}

var (
	iqnRE      = regexp.MustCompile(`^(iqn\.|eui\.|naa\.)[A-Za-z0-9.:_-]{1,219}$`)
	chapUserRE = regexp.MustCompile(`^[!-~]{1,255}$`) // printable, no space
	cephNameRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
)

// checkHostPort accepts "host", "host:port" and "[v6]:port".
func checkHostPort(s string) error {
	if s == "" || strings.ContainsAny(s, " \t\r\n,/@") {
		return fmt.Errorf("address %q: want host or host:port", s)
	}
	if host, port, err := net.SplitHostPort(s); err == nil {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || host == "" {
			return fmt.Errorf("address %q: want host:port with a port from 1 to 65535", s)
		}
		return nil
	}
	if strings.Contains(s, ":") {
		return fmt.Errorf("address %q: want host, host:port or [v6]:port", s)
	}
	return nil
}

func checkSecret(s Secret, what string) error {
	if s.File != "" && !isAbs(s.File) {
		return fmt.Errorf("%s file %q is not an absolute path", what, s.File)
	}
	return nil
}

func isAbs(p string) bool { return strings.HasPrefix(p, "/") }

// checkDisk checks d's source, format, serial, node and slot; slots are
// 1 to slots. It returns d with defaults filled in (format raw, node
// "disk<i>").
func checkDisk(d Disk, i, slots int) (Disk, error) {
	n := 0
	if d.Path != "" {
		n++
		if !isAbs(d.Path) {
			return d, fmt.Errorf("path %q is not absolute", d.Path)
		}
	}
	if d.ISCSI != nil {
		n++
		if err := checkISCSI(d.ISCSI); err != nil {
			return d, err
		}
	}
	if d.RBD != nil {
		n++
		if err := checkRBD(d.RBD); err != nil {
			return d, err
		}
	}
	if n != 1 {
		return d, fmt.Errorf("want exactly one source (a path, ISCSI or RBD), got %d", n)
	}
	if d.Format == "" {
		d.Format = "raw"
	}
	if !formatRE.MatchString(d.Format) {
		return d, fmt.Errorf("format %q", d.Format)
	}
	if d.Serial != "" && !serialRE.MatchString(d.Serial) {
		return d, fmt.Errorf("serial %q: want at most 20 of A-Z a-z 0-9 . _ -", d.Serial)
	}
	if d.Node == "" {
		d.Node = fmt.Sprintf("disk%d", i)
	}
	if !nodeRE.MatchString(d.Node) {
		return d, fmt.Errorf("node name %q: want a letter then up to 26 of A-Z a-z 0-9 _ . -", d.Node)
	}
	if d.Slot < 0 || d.Slot > slots {
		if slots == 0 {
			return d, fmt.Errorf("slot %d: the VM has no hot-plug slots (VolumeSlots 0)", d.Slot)
		}
		return d, fmt.Errorf("slot %d: want 1 to %d, or 0 for none", d.Slot, slots)
	}
	return d, nil
}

func checkISCSI(s *ISCSI) error {
	if err := checkHostPort(s.Portal); err != nil {
		return fmt.Errorf("iscsi portal: %w", err)
	}
	if !iqnRE.MatchString(s.Target) {
		return fmt.Errorf("iscsi target %q: want an iqn., eui. or naa. name", s.Target)
	}
	if s.LUN < 0 || s.LUN > 16383 {
		return fmt.Errorf("iscsi lun %d: want 0 to 16383", s.LUN)
	}
	if s.Timeout < 0 || s.Timeout > 3600 {
		return fmt.Errorf("iscsi timeout %d s: want 0 to 3600", s.Timeout)
	}
	if s.InitiatorName != "" && !iqnRE.MatchString(s.InitiatorName) {
		return fmt.Errorf("iscsi initiator name %q: want an iqn. name", s.InitiatorName)
	}
	switch {
	case s.User == "" && !s.Secret.empty():
		return fmt.Errorf("iscsi: a CHAP password without a CHAP user")
	case s.User != "" && s.Secret.empty():
		return fmt.Errorf("iscsi: CHAP user %q without a password (Secret)", s.User)
	case s.User != "" && !chapUserRE.MatchString(s.User):
		return fmt.Errorf("iscsi CHAP user %q: want printable characters, no space", s.User)
	}
	return checkSecret(s.Secret, "iscsi CHAP password")
}

func checkRBD(r *RBD) error {
	if len(r.Monitors) == 0 {
		return fmt.Errorf("rbd: no monitor")
	}
	for _, m := range r.Monitors {
		if err := checkHostPort(m); err != nil {
			return fmt.Errorf("rbd monitor: %w", err)
		}
	}
	if !cephNameRE.MatchString(r.Pool) {
		return fmt.Errorf("rbd pool %q: want up to 128 of A-Z a-z 0-9 _ . -", r.Pool)
	}
	if !cephNameRE.MatchString(r.Image) {
		return fmt.Errorf("rbd image %q: want up to 128 of A-Z a-z 0-9 _ . -", r.Image)
	}
	if r.Conf != "" && !isAbs(r.Conf) {
		return fmt.Errorf("rbd conf %q is not an absolute path", r.Conf)
	}
	if r.User != "" && !cephNameRE.MatchString(r.User) {
		return fmt.Errorf("rbd user %q: want up to 128 of A-Z a-z 0-9 _ . -", r.User)
	}
	if _, err := base64.StdEncoding.DecodeString(string(r.Secret.Value)); err != nil {
		return fmt.Errorf("rbd key: want base64 text, as a keyring has it")
	}
	return checkSecret(r.Secret, "rbd key")
}

// secretID is the QEMU object id of the secret of the disk node.
func secretID(node string) string { return "sec-" + node }

// diskSecret returns the secret d's source needs, if any, and the format
// of its file: a CHAP password is its raw bytes; a Ceph key is base64
// text (as a keyring has it), which QEMU decodes into the secret and
// encodes again for librados.
func diskSecret(d Disk) (s Secret, format string, ok bool) {
	switch {
	case d.ISCSI != nil && d.ISCSI.User != "":
		return d.ISCSI.Secret, "raw", true
	case d.RBD != nil && !d.RBD.Secret.empty():
		return d.RBD.Secret, "base64", true
	}
	return Secret{}, "", false
}

// secretObject is the object-add argument of the secret s of node: its
// value (base64-encoded unless it is base64 already) or else its file.
func secretObject(node string, s Secret, format string) map[string]any {
	args := map[string]any{"qom-type": "secret", "id": secretID(node), "format": "base64"}
	switch {
	case len(s.Value) > 0 && format == "base64":
		args["data"] = string(s.Value)
	case len(s.Value) > 0:
		args["data"] = base64.StdEncoding.EncodeToString(s.Value)
	default:
		args["file"], args["format"] = s.File, format
	}
	return args
}

// secretObjectArg is the -object value that has QEMU read the secret of
// node from file.
func secretObjectArg(node, file, format string) string {
	return "secret,id=" + secretID(node) + ",file=" + escapeOpt(file) + ",format=" + format
}

type blockdevFile struct {
	Driver   string `json:"driver"`
	Filename string `json:"filename"`
	ReadOnly bool   `json:"read-only"`
}

type blockdevISCSI struct {
	Driver         string `json:"driver"`
	Transport      string `json:"transport"`
	Portal         string `json:"portal"`
	Target         string `json:"target"`
	LUN            int    `json:"lun"`
	InitiatorName  string `json:"initiator-name,omitempty"`
	User           string `json:"user,omitempty"`
	PasswordSecret string `json:"password-secret,omitempty"`
	Timeout        int    `json:"timeout,omitempty"`
	ReadOnly       bool   `json:"read-only"`
}

type inetAddr struct {
	Host string `json:"host"`
	Port string `json:"port"`
}

type blockdevRBD struct {
	Driver             string     `json:"driver"`
	Pool               string     `json:"pool"`
	Image              string     `json:"image"`
	Conf               string     `json:"conf,omitempty"`
	Server             []inetAddr `json:"server"`
	User               string     `json:"user,omitempty"`
	KeySecret          string     `json:"key-secret,omitempty"`
	AuthClientRequired []string   `json:"auth-client-required,omitempty"`
	ReadOnly           bool       `json:"read-only"`
}

type blockdev struct {
	Driver   string `json:"driver"`
	NodeName string `json:"node-name"`
	ReadOnly bool   `json:"read-only"`
	File     any    `json:"file"`
}

// splitHostPort splits "host[:port]" with def as the port when absent.
func splitHostPort(s, def string) inetAddr {
	if h, p, err := net.SplitHostPort(s); err == nil {
		return inetAddr{h, p}
	}
	return inetAddr{s, def}
}

// blockdevOf is the blockdev-add argument of the checked disk d: its
// format node, named d.Node, over its protocol node. Secrets are named
// by object id only.
func blockdevOf(d Disk) blockdev {
	b := blockdev{Driver: d.Format, NodeName: d.Node, ReadOnly: d.ReadOnly}
	switch {
	case d.ISCSI != nil:
		s := d.ISCSI
		f := blockdevISCSI{Driver: "iscsi", Transport: "tcp", Portal: s.Portal, Target: s.Target, LUN: s.LUN,
			InitiatorName: s.InitiatorName, User: s.User, Timeout: s.Timeout, ReadOnly: d.ReadOnly}
		if s.User != "" {
			f.PasswordSecret = secretID(d.Node)
		}
		b.File = f
	case d.RBD != nil:
		r := d.RBD
		f := blockdevRBD{Driver: "rbd", Pool: r.Pool, Image: r.Image, Conf: r.Conf, User: r.User, ReadOnly: d.ReadOnly}
		for _, m := range r.Monitors {
			f.Server = append(f.Server, splitHostPort(m, "6789"))
		}
		if !r.Secret.empty() {
			f.KeySecret = secretID(d.Node)
			f.AuthClientRequired = []string{"cephx"}
		}
		b.File = f
	default:
		b.File = blockdevFile{Driver: "file", Filename: d.Path, ReadOnly: d.ReadOnly}
	}
	return b
}

// deviceID is the QEMU id of the virtio-blk device of node.
func deviceID(node string) string { return "virtio-" + node }

// deviceProps are the device_add arguments of the checked disk d (boot:
// bootindex 1).
func deviceProps(d Disk, boot bool) map[string]any {
	m := map[string]any{"driver": "virtio-blk-pci", "drive": d.Node, "id": deviceID(d.Node)}
	if d.Slot > 0 {
		m["bus"], m["addr"] = SlotID(d.Slot), "0x0"
	}
	if d.Serial != "" {
		m["serial"] = d.Serial
	}
	if boot {
		m["bootindex"] = 1
	}
	return m
}

// deviceArg is the -device value of the checked disk d: deviceProps,
// in a fixed order.
func deviceArg(d Disk, boot bool) string {
	m := deviceProps(d, boot)
	dev := "virtio-blk-pci"
	for _, k := range []string{"drive", "id", "bus", "addr", "serial", "bootindex"} {
		if v, ok := m[k]; ok {
			dev += fmt.Sprintf(",%s=%v", k, v)
		}
	}
	return dev
}

// diskArgs returns the arguments of the checked disk d: its secret
// object (from its file), -blockdev and -device.
func diskArgs(d Disk, boot bool) ([]string, error) {
	var a []string
	if s, format, ok := diskSecret(d); ok {
		if s.File == "" {
			return nil, fmt.Errorf("its secret has no File: a launch reads secrets from files")
		}
		a = append(a, "-object", secretObjectArg(d.Node, s.File, format))
	}
	bd, err := json.Marshal(blockdevOf(d))
	if err != nil {
		return nil, err
	}
	return append(a, "-blockdev", string(bd), "-device", deviceArg(d, boot)), nil
}

// VolumeOfNode is the volume id of a block node VolumeNode named.
func VolumeOfNode(node string) (string, bool) {
	id, ok := strings.CutPrefix(node, "vol-")
	return id, ok && id != ""
}
