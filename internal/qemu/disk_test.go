package qemu

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/shoalvm/shoal/internal/api"
)

const chapPassword = "s3cret-chap-pw"
const cephKey = "AQBzmYJlAAAAABAA0nQ5c2VjcmV0a2V5PT0="

func volConfig(disks ...Disk) Config {
	return Config{Name: "web1", Dir: "/var/lib/shoal/vms/web1", Accel: "tcg", CPUs: 1, MemoryMiB: 128,
		VolumeSlots: 16, Disks: disks}
}

// TestArgsDiskSources checks the argv of each disk source: the secret is
// an object read from its file, the blockdev names it by id, and the
// secret itself is nowhere in the argv.
func TestArgsDiskSources(t *testing.T) {
	boot := Disk{Path: "/pool/web1.qcow2", Format: "qcow2", Serial: "disk0"}
	tests := []struct {
		name string
		disk Disk
		want []string
	}{
		{
			name: "file volume",
			disk: Disk{Path: "/pool/vol-ab12.qcow2", Format: "qcow2", Serial: "vab12", Node: "vol-ab12", Slot: 3},
			want: []string{
				`-blockdev {"driver":"qcow2","node-name":"vol-ab12","read-only":false,"file":{"driver":"file","filename":"/pool/vol-ab12.qcow2","read-only":false}}`,
				"-device virtio-blk-pci,drive=vol-ab12,id=virtio-vol-ab12,bus=vslot3,addr=0x0,serial=vab12",
			},
		},
		{
			name: "iscsi with chap",
			disk: Disk{Node: "vol-cd34", Slot: 1, Format: "qcow2", Serial: "vcd34", ISCSI: &ISCSI{
				Portal: "10.0.0.5:3260", Target: "iqn.2026-12.io.shoal:vol-cd34", LUN: 1,
				InitiatorName: "iqn.2026-12.io.shoal:host-host1", User: "shoal", Timeout: 5,
				Secret: Secret{File: "/var/lib/shoal/vms/web1/vol-cd34.secret", Value: SecretValue(chapPassword)},
			}},
			want: []string{
				"-object secret,id=sec-vol-cd34,file=/var/lib/shoal/vms/web1/vol-cd34.secret,format=raw",
				`-blockdev {"driver":"qcow2","node-name":"vol-cd34","read-only":false,"file":{"driver":"iscsi","transport":"tcp",` +
					`"portal":"10.0.0.5:3260","target":"iqn.2026-12.io.shoal:vol-cd34","lun":1,` +
					`"initiator-name":"iqn.2026-12.io.shoal:host-host1","user":"shoal","password-secret":"sec-vol-cd34","timeout":5,"read-only":false}}`,
				"-device virtio-blk-pci,drive=vol-cd34,id=virtio-vol-cd34,bus=vslot1,addr=0x0,serial=vcd34",
			},
		},
		{
			name: "iscsi without chap, read-only raw",
			disk: Disk{Node: "vol-ef56", Slot: 16, ReadOnly: true, ISCSI: &ISCSI{
				Portal: "san.example", Target: "iqn.2003-01.org.example:t1", LUN: 0,
			}},
			want: []string{
				`-blockdev {"driver":"raw","node-name":"vol-ef56","read-only":true,"file":{"driver":"iscsi","transport":"tcp",` +
					`"portal":"san.example","target":"iqn.2003-01.org.example:t1","lun":0,"read-only":true}}`,
				"-device virtio-blk-pci,drive=vol-ef56,id=virtio-vol-ef56,bus=vslot16,addr=0x0",
			},
		},
		{
			name: "rbd with cephx",
			disk: Disk{Node: "vol-7890", Slot: 9, Format: "qcow2", RBD: &RBD{
				Monitors: []string{"10.0.1.1:6789", "10.0.1.2", "[fd00::3]:3300"}, Pool: "shoal", Image: "vol-7890",
				User: "shoal", Secret: Secret{File: "/var/lib/shoal/vms/web1/vol-7890.secret"}, Conf: "/etc/shoal/ceph.conf",
			}},
			want: []string{
				"-object secret,id=sec-vol-7890,file=/var/lib/shoal/vms/web1/vol-7890.secret,format=base64",
				`-blockdev {"driver":"qcow2","node-name":"vol-7890","read-only":false,"file":{"driver":"rbd","pool":"shoal","image":"vol-7890","conf":"/etc/shoal/ceph.conf",` +
					`"server":[{"host":"10.0.1.1","port":"6789"},{"host":"10.0.1.2","port":"6789"},{"host":"fd00::3","port":"3300"}],` +
					`"user":"shoal","key-secret":"sec-vol-7890","auth-client-required":["cephx"],"read-only":false}}`,
				"-device virtio-blk-pci,drive=vol-7890,id=virtio-vol-7890,bus=vslot9,addr=0x0",
			},
		},
		{
			name: "rbd without auth",
			disk: Disk{Node: "vol-0a", Slot: 2, RBD: &RBD{Monitors: []string{"127.0.0.1:6789"}, Pool: "rbd", Image: "img"}},
			want: []string{
				`-blockdev {"driver":"raw","node-name":"vol-0a","read-only":false,"file":{"driver":"rbd","pool":"rbd","image":"img",` +
					`"server":[{"host":"127.0.0.1","port":"6789"}],"read-only":false}}`,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := Args(volConfig(boot, tt.disk))
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tt.want {
				if !hasArg(a, w) {
					t.Errorf("argv lacks %q:\n%s", w, strings.Join(a, "\n"))
				}
			}
			all := strings.Join(a, " ")
			for _, secret := range []string{chapPassword, cephKey} {
				if strings.Contains(all, secret) {
					t.Errorf("a secret is on the command line: %s", all)
				}
			}
			// The boot disk keeps its place and name.
			if !hasArg(a, "-device virtio-blk-pci,drive=disk0,id=virtio-disk0,serial=disk0,bootindex=1") {
				t.Errorf("boot disk device changed: %q", a)
			}
		})
	}
}

// TestArgsVolumeSlots checks the root ports of the hot-plug slots: eight
// to a PCI slot from 00:10.0, function 0 multifunction, and none at all
// with VolumeSlots 0 (the argv of VMs from before volumes).
func TestArgsVolumeSlots(t *testing.T) {
	cfg := volConfig(Disk{Path: "/pool/boot.qcow2", Format: "qcow2"})
	cfg.VolumeSlots = 10
	a, err := Args(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{
		"-device pcie-root-port,id=vslot1,bus=pcie.0,addr=0x10.0,multifunction=on,chassis=1,port=1,io-reserve=0",
		"-device pcie-root-port,id=vslot8,bus=pcie.0,addr=0x10.7,chassis=8,port=8,io-reserve=0",
		"-device pcie-root-port,id=vslot9,bus=pcie.0,addr=0x11.0,multifunction=on,chassis=9,port=9,io-reserve=0",
		"-device pcie-root-port,id=vslot10,bus=pcie.0,addr=0x11.1,chassis=10,port=10,io-reserve=0",
	} {
		if !hasArg(a, w) {
			t.Errorf("argv lacks %q", w)
		}
	}
	if hasArg(a, "-device pcie-root-port,id=vslot11") || strings.Count(strings.Join(a, " "), "pcie-root-port") != 10 {
		t.Errorf("want exactly 10 root ports: %q", a)
	}
	if SlotAddr(1) != "00:10.0" || SlotAddr(8) != "00:10.7" || SlotAddr(9) != "00:11.0" || SlotAddr(MaxVolumeSlots) != "00:17.7" {
		t.Errorf("SlotAddr: 1 %s, 8 %s, 9 %s, %d %s", SlotAddr(1), SlotAddr(8), SlotAddr(9), MaxVolumeSlots, SlotAddr(MaxVolumeSlots))
	}
	if VolumeNode("0123456789ab") != "vol-0123456789ab" || VolumeSerial("0123456789ab") != "v0123456789ab" ||
		VolumeSerial("0123456789abcdef0123456789") != "v0123456789abcdef012" ||
		SecretFile("/vms/x", "vol-1") != "/vms/x/sec-vol-1.secret" {
		t.Errorf("names: %s %s %s %s", VolumeNode("0123456789ab"), VolumeSerial("0123456789ab"),
			VolumeSerial("0123456789abcdef0123456789"), SecretFile("/vms/x", "vol-1"))
	}
	cfg.VolumeSlots = 0
	if a, err = Args(cfg); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(strings.Join(a, " "), "pcie-root-port") {
		t.Errorf("root ports without VolumeSlots: %q", a)
	}
}

func TestArgsDiskErrors(t *testing.T) {
	file := func(node string, slot int) Disk { return Disk{Path: "/p/" + node, Node: node, Slot: slot} }
	chap := &ISCSI{Portal: "10.0.0.5:3260", Target: "iqn.2026-12.io.shoal:vol-a", LUN: 1, User: "u",
		Secret: Secret{File: "/d/s"}}
	tests := []struct {
		name  string
		slots int
		disks []Disk
		want  string
	}{
		{"no source", 16, []Disk{{Format: "raw"}}, "want exactly one source"},
		{"two sources", 16, []Disk{{Path: "/a", RBD: &RBD{Monitors: []string{"m"}, Pool: "p", Image: "i"}}}, "want exactly one source"},
		{"slot without slots", 0, []Disk{file("disk0", 0), file("vol-a", 1)}, "no hot-plug slots"},
		{"slot out of range", 4, []Disk{file("disk0", 0), file("vol-a", 5)}, "slot 5: want 1 to 4"},
		{"slot twice", 4, []Disk{file("vol-a", 2), file("vol-b", 2)}, "slot 2 already holds vol-a"},
		{"node twice", 4, []Disk{file("vol-a", 1), file("vol-a", 2)}, `node name "vol-a" used twice`},
		{"default node clash", 4, []Disk{file("", 0), file("disk0", 1)}, `node name "disk0" used twice`},
		{"long node", 4, []Disk{file("vol-0123456789abcdef0123456789", 1)}, "node name"},
		{"too many slots", MaxVolumeSlots + 1, nil, "volume slots 65"},
		{"iscsi bad portal", 4, []Disk{{Node: "v", Slot: 1, ISCSI: &ISCSI{Portal: "10.0.0.5:0", Target: "iqn.a:b"}}}, "iscsi portal"},
		{"iscsi bad iqn", 4, []Disk{{Node: "v", Slot: 1, ISCSI: &ISCSI{Portal: "h", Target: "target1"}}}, "iscsi target"},
		{"iscsi user without secret", 4, []Disk{{Node: "v", Slot: 1, ISCSI: &ISCSI{Portal: "h", Target: "iqn.a:b", User: "u"}}}, "without a password"},
		{"iscsi secret without user", 4, []Disk{{Node: "v", Slot: 1, ISCSI: &ISCSI{Portal: "h", Target: "iqn.a:b", Secret: Secret{File: "/s"}}}}, "without a CHAP user"},
		{"iscsi relative secret file", 4, []Disk{{Node: "v", Slot: 1, ISCSI: &ISCSI{Portal: "h", Target: "iqn.a:b", User: "u", Secret: Secret{File: "s"}}}}, "not an absolute path"},
		{"iscsi launch with a value only", 4, []Disk{{Node: "v", Slot: 1, ISCSI: &ISCSI{Portal: "h", Target: "iqn.a:b", User: "u", Secret: Secret{Value: SecretValue("x")}}}}, "secret has no File"},
		{"rbd no monitor", 4, []Disk{{Node: "v", Slot: 1, RBD: &RBD{Pool: "p", Image: "i"}}}, "rbd: no monitor"},
		{"rbd key not base64", 4, []Disk{{Node: "v", Slot: 1, RBD: &RBD{Monitors: []string{"m"}, Pool: "p", Image: "i", Secret: Secret{Value: SecretValue("not base64!")}}}}, "rbd key: want base64"},
		{"rbd relative conf", 4, []Disk{{Node: "v", Slot: 1, RBD: &RBD{Monitors: []string{"m"}, Pool: "p", Image: "i", Conf: "ceph.conf"}}}, "rbd conf"},
		{"iscsi negative timeout", 4, []Disk{{Node: "v", Slot: 1, ISCSI: &ISCSI{Portal: "h", Target: "iqn.a:b", Timeout: -1}}}, "iscsi timeout"},
		{"rbd bad image", 4, []Disk{{Node: "v", Slot: 1, RBD: &RBD{Monitors: []string{"m"}, Pool: "p", Image: "a/b"}}}, "rbd image"},
		{"ok chap", 4, []Disk{{Node: "v", Slot: 1, ISCSI: chap}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := volConfig(tt.disks...)
			cfg.VolumeSlots = tt.slots
			_, err := Args(cfg)
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(fmt.Sprint(err), tt.want) {
				t.Errorf("err = %v, want ErrInvalidConfig with %q", err, tt.want)
			}
		})
	}
	// Up to 15 devices on pcie.0 with hot-plug slots; none of them may
	// reach the first root port at 00:10.0.
	cfg := volConfig()
	for i := range 15 {
		cfg.Disks = append(cfg.Disks, Disk{Path: fmt.Sprintf("/p/%d", i)})
	}
	if _, err := Args(cfg); err != nil {
		t.Errorf("15 disks without a slot: %v", err)
	}
	cfg.NICs = []NIC{{MAC: "52:54:00:00:00:01"}}
	if _, err := Args(cfg); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("16 devices on pcie.0 with slots: err = %v, want ErrInvalidConfig", err)
	}
}

// TestBlockdevJSON checks what AttachDisk sends QEMU: the same blockdev
// as the command line's, and a device in its slot.
func TestBlockdevJSON(t *testing.T) {
	d, err := checkDisk(Disk{Node: "vol-cd34", Slot: 5, Format: "qcow2", Serial: "vcd34", ISCSI: &ISCSI{
		Portal: "10.0.0.5", Target: "iqn.2026-12.io.shoal:vol-cd34", LUN: 1, User: "shoal",
		Secret: Secret{Value: SecretValue(chapPassword)},
	}}, 0, MaxVolumeSlots)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(blockdevOf(d))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"driver":"qcow2","node-name":"vol-cd34","read-only":false,"file":{"driver":"iscsi","transport":"tcp","portal":"10.0.0.5",` +
		`"target":"iqn.2026-12.io.shoal:vol-cd34","lun":1,"user":"shoal","password-secret":"sec-vol-cd34","read-only":false}}`
	if string(b) != want {
		t.Errorf("blockdev-add:\n got %s\nwant %s", b, want)
	}
	sec, _ := json.Marshal(secretObject(d.Node, Secret{Value: SecretValue(chapPassword)}, "raw"))
	if string(sec) != `{"data":"czNjcmV0LWNoYXAtcHc=","format":"base64","id":"sec-vol-cd34","qom-type":"secret"}` {
		t.Errorf("object-add of a chap password: %s", sec)
	}
	// A Ceph key is base64 already: QEMU decodes it, and librados gets
	// it encoded again.
	sec, _ = json.Marshal(secretObject("vol-r", Secret{Value: SecretValue(cephKey)}, "base64"))
	if string(sec) != `{"data":"`+cephKey+`","format":"base64","id":"sec-vol-r","qom-type":"secret"}` {
		t.Errorf("object-add of a ceph key: %s", sec)
	}
	sec, _ = json.Marshal(secretObject("vol-r", Secret{File: "/vm/vol-r.key"}, "base64"))
	if string(sec) != `{"file":"/vm/vol-r.key","format":"base64","id":"sec-vol-r","qom-type":"secret"}` {
		t.Errorf("object-add from a file: %s", sec)
	}
	dev, _ := json.Marshal(deviceProps(d, false))
	if string(dev) != `{"addr":"0x0","bus":"vslot5","drive":"vol-cd34","driver":"virtio-blk-pci","id":"virtio-vol-cd34","serial":"vcd34"}` {
		t.Errorf("device_add: %s", dev)
	}
}

// TestSecretNotPrinted checks that a Disk with a secret value can be
// printed, logged or marshalled without the secret showing.
func TestSecretNotPrinted(t *testing.T) {
	d := Disk{Node: "vol-a", Slot: 1, ISCSI: &ISCSI{Portal: "h", Target: "iqn.a:b", User: "u",
		Secret: Secret{Value: SecretValue(chapPassword)}}}
	var logged strings.Builder
	slog.New(slog.NewTextHandler(&logged, nil)).Info("attach", "disk", d, "iscsi", *d.ISCSI, "secret", d.ISCSI.Secret.Value)
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("attach", "iscsi", *d.ISCSI)
	for _, s := range []string{
		fmt.Sprintf("%v %+v %#v %s %x", *d.ISCSI, *d.ISCSI, *d.ISCSI, d.ISCSI.Secret.Value, d.ISCSI.Secret.Value),
		logged.String(),
	} {
		if strings.Contains(s, chapPassword) || strings.Contains(s, fmt.Sprintf("%x", chapPassword)) {
			t.Errorf("secret shows: %s", s)
		}
	}
	if _, err := json.Marshal(d); err == nil {
		t.Error("a disk with a secret value was marshalled")
	}
}

// TestHotplugErrorKinds checks that the hot-plug methods refuse bad
// input with api.ErrInvalid before talking to QEMU.
func TestHotplugErrorKinds(t *testing.T) {
	p := &Process{Dir: "/nonexistent", log: slog.New(slog.DiscardHandler)}
	ctx := t.Context()
	for name, err := range map[string]error{
		"attach without slot": p.AttachDisk(ctx, Disk{Path: "/a", Node: "vol-a"}),
		"attach without node": p.AttachDisk(ctx, Disk{Path: "/a", Slot: 1}),
		"attach bad source":   p.AttachDisk(ctx, Disk{Path: "a", Node: "vol-a", Slot: 1}),
		"detach bad node":     p.DetachDisk(ctx, "vol a", 0),
		"grow bad node":       p.GrowDisk(ctx, "", 1<<20),
		"grow odd size":       p.GrowDisk(ctx, "vol-a", 1000),
	} {
		if !errors.Is(err, api.ErrInvalid) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: err = %v, want a one-line api.ErrInvalid", name, err)
		}
	}
}
