package qemu

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shoalvm/shoal/internal/cloudinit"
	"github.com/shoalvm/shoal/internal/image"
)

// guestNet is a network namespace of the test's own with a bridge,
// 10.98.7.1/24, that test guests' taps join. Nothing in it is routed.
type guestNet struct{ ns string }

const (
	guestNetBridgeAddr = "10.98.7.1/24"
	guestAddr          = "10.98.7.10"
)

func newGuestNet(t *testing.T) guestNet {
	t.Helper()
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	n := guestNet{"shoaltest-qh-" + hex.EncodeToString(rnd[:])}
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("netns", "add", n.ns)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", n.ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v %s", n.ns, err, out)
		}
	})
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"link", "add", "br0", "type", "bridge"},
		{"addr", "add", guestNetBridgeAddr, "dev", "br0"},
		{"link", "set", "br0", "up"},
	} {
		run(append([]string{"-n", n.ns}, args...)...)
	}
	return n
}

// tap makes a tap on the bridge and opens it from inside the namespace,
// for a NIC's TapFD.
func (n guestNet) tap(t *testing.T, name string) *os.File {
	t.Helper()
	for _, args := range [][]string{
		{"tuntap", "add", "dev", name, "mode", "tap", "vnet_hdr"},
		{"link", "set", name, "master", "br0", "up"},
	} {
		if out, err := exec.Command("ip", append([]string{"-n", n.ns}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	type result struct {
		f   *os.File
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // kept locked, and so ended, if setns back fails
		f, err := n.openTap(name)
		ch <- result{f, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatalf("open tap %s in %s: %v", name, n.ns, r.err)
	}
	t.Cleanup(func() { r.f.Close() })
	return r.f
}

// openTap binds a tun fd to the tap name of the namespace; the calling
// thread is locked, and unlocked only if it got back to its own.
func (n guestNet) openTap(name string) (*os.File, error) {
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return nil, err
	}
	defer self.Close()
	target, err := os.Open("/run/netns/" + n.ns)
	if err != nil {
		return nil, err
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		return nil, fmt.Errorf("setns: %w", err)
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err == nil {
		var ifr *unix.Ifreq
		if ifr, err = unix.NewIfreq(name); err == nil {
			ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
			err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
		}
		if err != nil {
			unix.Close(fd)
		}
	}
	if unix.Setns(int(self.Fd()), unix.CLONE_NEWNET) == nil {
		runtime.UnlockOSThread()
	}
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), "tap:"+name), nil
}

// get fetches path from the guest with busybox wget (which follows
// redirects) run inside the namespace.
func (n guestNet) get(path string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", n.ns,
		"busybox", "wget", "-qO-", "http://"+guestAddr+path).Output()
	return string(out), err
}

// waitGet polls path until ok accepts the answer.
func (n guestNet) waitGet(t *testing.T, path string, limit time.Duration, ok func(string) bool) string {
	t.Helper()
	deadline := time.Now().Add(limit)
	var out string
	var err error
	for time.Now().Before(deadline) {
		if out, err = n.get(path); err == nil && ok(out) {
			return out
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("GET %s: no good answer within %s; last %q (%v)", path, limit, out, err)
	return ""
}

// pciAddrs maps the qdev id of each PCI device of p to its address
// (bus:slot.function), behind bridges too.
func pciAddrs(t *testing.T, ctx context.Context, p *Process) map[string]string {
	t.Helper()
	var buses []struct {
		Devices []pciDevice `json:"devices"`
	}
	if err := p.QMP().Execute(ctx, "query-pci", nil, &buses); err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	var walk func([]pciDevice)
	walk = func(ds []pciDevice) {
		for _, d := range ds {
			if d.QdevID != "" {
				m[d.QdevID] = fmt.Sprintf("%02x:%02x.%d", d.Bus, d.Slot, d.Function)
			}
			if d.Bridge != nil {
				walk(d.Bridge.Devices)
			}
		}
	}
	for _, b := range buses {
		walk(b.Devices)
	}
	return m
}

// pciDevice is a device of query-pci.
type pciDevice struct {
	Bus      int    `json:"bus"`
	Slot     int    `json:"slot"`
	Function int    `json:"function"`
	QdevID   string `json:"qdev_id"`
	Bridge   *struct {
		Devices []pciDevice `json:"devices"`
	} `json:"pci_bridge"`
}

// requireGuest skips without root or the guest's kernel, except under
// CI=true, where they are required.
func requireGuest(t *testing.T) {
	t.Helper()
	qemuBinary(t)
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	if _, _, err := image.FindCloudKernel(); err != nil {
		missing = append(missing, "linux-image-cloud-amd64")
	}
	for _, tool := range []string{"ip", "busybox", "qemu-img", "genisoimage"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("missing under CI: %v", missing)
	}
	t.Skipf("missing: %v", missing)
}

// TestHotplugTinyGuest boots the tiny guest, hot-plugs a qcow2 volume,
// which the guest sees (GET /disks) and writes and reads (GET /vol),
// grows it, which the guest sees; checks that a QEMU launched with the
// volume on its command line has every device at the source's PCI
// address; live-migrates to such a QEMU, where the guest still reads
// the volume, and detaches it there, which the guest sees too.
func TestHotplugTinyGuest(t *testing.T) {
	requireGuest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	log := testLog(t)
	files := t.TempDir()
	art, err := image.BuildTiny(ctx, log, filepath.Join(files, "tiny"), image.TinyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	net := newGuestNet(t)
	const mac = "52:54:00:98:07:0a"
	boot, seed, vol := filepath.Join(files, "boot.qcow2"), filepath.Join(files, "seed.iso"), filepath.Join(files, "vol.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", art.Disk, boot, "64M")
	qemuImg(t, "create", "-q", "-f", "qcow2", vol, "32M")
	if err := cloudinit.WriteSeed(ctx, seed, cloudinit.Seed{InstanceID: "i-hotplug", Hostname: "hotplug", MAC: mac,
		Address: guestAddr + "/24", Gateway: "10.98.7.1"}); err != nil {
		t.Fatal(err)
	}
	config := func(dir, tap string) Config {
		return Config{Name: "hotplug", Dir: dir, Accel: "tcg", CPUs: 1, MemoryMiB: 256,
			Kernel: art.Kernel, Initrd: art.Initrd, Cmdline: art.Cmdline,
			Disks: []Disk{
				{Path: boot, Format: "qcow2", Serial: "disk0"},
				{Path: seed, Format: "raw", ReadOnly: true, Serial: "cidata"},
			},
			NICs:        []NIC{{MAC: mac, TapFD: net.tap(t, tap), ID: "net0"}},
			VolumeSlots: 4,
		}
	}
	launchCtx := func(cfg Config) *Process {
		t.Helper()
		p, err := Launch(ctx, log, qemuBinary(t), cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if t.Failed() {
				b, _ := os.ReadFile(filepath.Join(cfg.Dir, ConsoleLog))
				t.Logf("%s console:\n%s", cfg.Dir, b)
			}
			_ = p.Kill()
		})
		return p
	}
	src := launchCtx(config(testDir(t), "tap0"))
	start := time.Now()
	net.waitGet(t, "/", 3*time.Minute, func(s string) bool { return strings.HasPrefix(s, "boot=") })
	t.Logf("guest serves %.1fs after launch", time.Since(start).Seconds())
	if got := net.waitGet(t, "/disks", 10*time.Second, func(string) bool { return true }); !strings.HasPrefix(got, "vda disk0 67108864\nvdb cidata ") {
		t.Errorf("GET /disks before attach = %q", got)
	}

	const slot = 3
	node, serial := VolumeNode("ab12cd34ef56"), VolumeSerial("ab12cd34ef56")
	volDisk := Disk{Path: vol, Format: "qcow2", Serial: serial, Node: node, Slot: slot}
	start = time.Now()
	if err := src.AttachDisk(ctx, volDisk); err != nil {
		t.Fatal(err)
	}
	net.waitGet(t, "/disks", 30*time.Second, func(s string) bool { return strings.Contains(s, " "+serial+" 33554432\n") })
	t.Logf("guest sees the hot-plugged disk %.1fs after attach", time.Since(start).Seconds())
	if err := src.AttachDisk(ctx, volDisk); err != nil {
		t.Errorf("attach again: %v", err)
	}
	if got, err := net.get("/vol?serial=" + serial + "&write=hello-hotplug"); err != nil || got != "ok\n" {
		t.Fatalf("write: %q %v", got, err)
	}
	if got, err := net.get("/vol?serial=" + serial); err != nil || got != "hello-hotplug\n" {
		t.Errorf("read: %q %v", got, err)
	}
	if err := src.GrowDisk(ctx, node, 64<<20); err != nil {
		t.Fatal(err)
	}
	net.waitGet(t, "/disks", 10*time.Second, func(s string) bool { return strings.Contains(s, " "+serial+" 67108864\n") })
	disks, err := src.Disks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(disks) != 3 || disks[2] != (AttachedDisk{Node: node, Device: "virtio-" + node, Slot: slot, SizeBytes: 64 << 20}) ||
		disks[0].Node != "disk0" || disks[0].Slot != 0 || disks[1].Node != "disk1" || !disks[1].ReadOnly {
		t.Errorf("Disks = %+v", disks)
	}
	srcPCI := pciAddrs(t, ctx, src)
	t.Logf("source PCI: %v", srcPCI)
	// Today's addresses of the boot disk, seed and NIC; the volume on
	// the bus of root port 3.
	for id, want := range map[string]string{"virtio-disk0": "00:01.0", "virtio-disk1": "00:02.0", "net0-dev": "00:03.0",
		SlotID(1): "00:10.0", SlotID(4): "00:10.3"} {
		if srcPCI[id] != want {
			t.Errorf("%s at %q, want %s", id, srcPCI[id], want)
		}
	}
	if a := srcPCI["virtio-"+node]; !strings.HasSuffix(a, ":00.0") || a == "00:00.0" {
		t.Errorf("volume at %q, want slot 0 of its port's bus", a)
	}

	// A QEMU launched with the volume on its command line (files of its
	// own; its firmware numbers the buses) has every device where the
	// source has it.
	coldFiles := t.TempDir()
	cold := config(testDir(t), "tap1")
	cold.Kernel, cold.Initrd, cold.Cmdline = "", "", ""
	for i := range cold.Disks {
		cold.Disks[i].Path = filepath.Join(coldFiles, fmt.Sprint(i))
		qemuImg(t, "create", "-q", "-f", cold.Disks[i].Format, cold.Disks[i].Path, "1M")
	}
	coldVol := volDisk
	coldVol.Path = filepath.Join(coldFiles, "vol")
	qemuImg(t, "create", "-q", "-f", "qcow2", coldVol.Path, "1M")
	cold.Disks = append(cold.Disks, coldVol)
	cp := launchCtx(cold)
	var coldPCI map[string]string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if coldPCI = pciAddrs(t, ctx, cp); coldPCI["virtio-"+node] != "" {
			break
		}
	}
	if fmt.Sprint(coldPCI) != fmt.Sprint(srcPCI) {
		t.Errorf("PCI addresses differ:\nhot-plugged  %v\ncommand line %v", srcPCI, coldPCI)
	}
	_ = cp.Kill()

	// Live migration to a target with the volume on its command line.
	dstCfg := config(testDir(t), "tap2")
	dstCfg.Disks = append(dstCfg.Disks, volDisk)
	dstCfg.Incoming = true
	dst := launchCtx(dstCfg)
	uri := "unix:" + filepath.Join(sockDir(t), "mig.sock")
	if err := dst.MigrateIncoming(ctx, uri); err != nil {
		t.Fatal(err)
	}
	if err := src.Migrate(ctx, uri, MigrateOptions{BandwidthBytes: UnlimitedBandwidth}); err != nil {
		t.Fatal(err)
	}
	if st, err := src.WaitMigration(ctx, 100*time.Millisecond); err != nil {
		t.Fatalf("migration: %+v: %v", st, err)
	}
	if err := src.Kill(); err != nil {
		t.Fatal(err)
	}
	if dstPCI := pciAddrs(t, ctx, dst); fmt.Sprint(dstPCI) != fmt.Sprint(srcPCI) {
		t.Errorf("PCI addresses differ after migration:\nsource %v\ntarget %v", srcPCI, dstPCI)
	}
	if got := net.waitGet(t, "/vol?serial="+serial, 30*time.Second, func(string) bool { return true }); got != "hello-hotplug\n" {
		t.Errorf("read on the target: %q", got)
	}

	start = time.Now()
	if err := dst.DetachDisk(ctx, node, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("guest released the disk %.1fs after detach", time.Since(start).Seconds())
	if got, _ := net.get("/disks"); strings.Contains(got, serial) || !strings.HasPrefix(got, "vda disk0 ") {
		t.Errorf("GET /disks after detach = %q", got)
	}
	if got, _ := net.get("/vol?serial=" + serial); got != "" {
		t.Errorf("GET /vol of a detached disk = %q, want a 404", got)
	}
	if disks, err := dst.Disks(ctx); err != nil || len(disks) != 2 {
		t.Errorf("Disks after detach = %+v, %v", disks, err)
	}
	if err := dst.DetachDisk(ctx, node, time.Second); err != nil {
		t.Errorf("detach again: %v", err)
	}
	// What the guest wrote is in the volume's file.
	flat := filepath.Join(files, "vol.raw")
	qemuImg(t, "convert", "-f", "qcow2", "-O", "raw", vol, flat)
	b, err := os.ReadFile(flat)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, []byte("hello-hotplug\n\x00")) || len(b) != 64<<20 {
		t.Errorf("volume file: %q..., %d bytes", b[:min(len(b), 20)], len(b))
	}
}
