package framerelay

// Helpers for the namespace tests: each test gets its own network namespace
// holding a bridge br0, a veth pair vbr (bridge port) / vout (the "wire"
// side, used raw), and taps the test itself holds open, as QEMU would.
// Nothing is created in the root namespace.

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var nsSeq atomic.Int32

type testNet struct {
	t    *testing.T
	name string
	ns   *os.File // /var/run/netns/<name>
}

// newTestNet creates the namespace, the bridge and the veth pair, and
// deletes the namespace (and so everything in it) when the test ends.
func newTestNet(t *testing.T) *testNet {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace with a bridge, a veth pair and taps")
	}
	name := fmt.Sprintf("frt%d-%d", os.Getpid(), nsSeq.Add(1))
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		run(t, "ip", "netns", "del", name)
		out, err := exec.Command("ip", "netns", "list").CombinedOutput()
		if err != nil || bytes.Contains(out, []byte(name)) {
			t.Errorf("namespace %s still listed after delete (%v): %s", name, err, out)
		}
	})
	ns, err := os.Open("/var/run/netns/" + name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	n := &testNet{t: t, name: name, ns: ns}
	run(t, "ip", "netns", "exec", name, "sysctl", "-qw",
		"net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
	n.ip("link", "set", "lo", "up")
	n.ip("link", "add", "br0", "type", "bridge")
	n.ip("link", "add", "vbr", "type", "veth", "peer", "name", "vout")
	n.ip("link", "set", "vbr", "master", "br0")
	for _, l := range []string{"br0", "vbr", "vout"} {
		n.ip("link", "set", l, "up")
	}
	return n
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

func (n *testNet) ip(args ...string) {
	n.t.Helper()
	run(n.t, "ip", append([]string{"-n", n.name}, args...)...)
}

// do runs fn on a fresh OS thread that has entered the namespace. The thread
// is never unlocked, so Go discards it when fn returns; sockets and tap fds
// opened by fn stay in the namespace.
func (n *testNet) do(fn func() error) {
	n.t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Setns(int(n.ns.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", n.name, err)
			return
		}
		errc <- fn()
	}()
	if err := <-errc; err != nil {
		n.t.Fatal(err)
	}
}

// addTap creates a tap held open by the test (the test plays QEMU), with
// virtio-net headers and checksum/TSO offloads when offload is set, and
// plugs it into br0.
func (n *testNet) addTap(name string, offload bool) *os.File {
	n.t.Helper()
	var f *os.File
	n.do(func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
		if err != nil {
			return err
		}
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			unix.Close(fd)
			return err
		}
		flags := uint16(unix.IFF_TAP | unix.IFF_NO_PI)
		if offload {
			flags |= unix.IFF_VNET_HDR
		}
		ifr.SetUint16(flags)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(fd)
			return fmt.Errorf("TUNSETIFF %s: %w", name, err)
		}
		if offload {
			off := unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO6
			if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, off); err != nil {
				unix.Close(fd)
				return fmt.Errorf("TUNSETOFFLOAD %s: %w", name, err)
			}
		}
		f = os.NewFile(uintptr(fd), name)
		return nil
	})
	n.t.Cleanup(func() { f.Close() })
	n.ip("link", "set", name, "master", "br0", "up")
	return f
}

func (n *testNet) capture(ifname string, keep time.Duration) *Capture {
	n.t.Helper()
	var c *Capture
	n.do(func() (err error) {
		c, err = StartCapture(n.t.Context(), ifname, keep)
		return err
	})
	n.t.Cleanup(func() { c.Close() })
	return c
}

func (n *testNet) injector(ifname string) *Injector {
	n.t.Helper()
	var in *Injector
	n.do(func() (err error) {
		in, err = OpenInjector(ifname)
		return err
	})
	n.t.Cleanup(func() { in.Close() })
	return in
}

// testType is the EtherType of test frames (IEEE local experimental), so
// stray traffic never confuses a check.
const testType = 0x88b5

var (
	guestMAC = []byte{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	peerMAC  = []byte{0x02, 0x00, 0x00, 0x00, 0x00, 0x01}
	bcastMAC = []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
)

// testFrame builds a testType frame whose payload starts with tag,
// padded to at least the Ethernet minimum.
func testFrame(dst, src []byte, tag string, size int) []byte {
	f := make([]byte, max(size, 60))
	copy(f, dst)
	copy(f[6:], src)
	binary.BigEndian.PutUint16(f[12:], testType)
	copy(f[14:], tag)
	return f
}

// tagged returns the tags of the testType frames among fs.
func tagged(fs []Frame) []string {
	var tags []string
	for _, f := range fs {
		if len(f.Data) >= 14 && binary.BigEndian.Uint16(f.Data[12:]) == testType {
			tags = append(tags, string(bytes.TrimRight(f.Data[14:], "\x00")))
		}
	}
	return tags
}

// waitFor polls cond for up to 3 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// readTap reads frames from a tap fd (as QEMU would) until one satisfies
// match or 3 s pass. hdr is the virtio-net header size to strip.
func readTap(t *testing.T, tap *os.File, hdr int, match func([]byte) bool) []byte {
	t.Helper()
	tap.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 70000)
	for {
		n, err := tap.Read(buf)
		if err != nil {
			t.Fatalf("read tap %s: %v", tap.Name(), err)
		}
		if f := buf[hdr:n]; match(f) {
			return append([]byte(nil), f...)
		}
	}
}
