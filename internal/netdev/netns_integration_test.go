package netdev

// Integration tests against the real kernel. They never touch the machine's
// root network namespace: TestIntegrationNetns creates a fresh namespace
// with `ip netns add`, re-executes this test binary inside it with
// `ip netns exec` (so every thread of the child process, and every netlink
// socket it opens, lives in that namespace, exactly as Shoal itself runs in
// the lab), and deletes the namespace afterwards. TestInNetns, the body,
// skips unless it was started that way, and refuses to run unless its
// network namespace is the one just created and differs from the parent's.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// netnsChildEnv carries the namespace name into the re-executed child, and
// netnsParentEnv the parent's own namespace (as /proc/self/ns/net reads).
const (
	netnsChildEnv  = "SHOAL_NETDEV_TEST_NETNS"
	netnsParentEnv = "SHOAL_NETDEV_TEST_PARENT_NETNS"
)

func requirePrivileged(t *testing.T) {
	t.Helper()
	why := ""
	if os.Geteuid() != 0 {
		why = "needs root (network namespaces, bridges, taps)"
	} else if _, err := exec.LookPath("ip"); err != nil {
		why = "needs iproute2's ip command"
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s; under CI this test must run", why)
	}
	t.Skip(why)
}

func TestIntegrationNetns(t *testing.T) {
	if os.Getenv(netnsChildEnv) != "" {
		t.Skip("already inside the test namespace")
	}
	requirePrivileged(t)

	ns := fmt.Sprintf("shoal-netdev-test-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", ns, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", ns, err, out)
		}
	})

	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	parentNS, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// `ip netns exec` execs the binary in place, so a timeout kills the
	// test binary itself, which is our own child.
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, exe,
		"-test.run=^TestInNetns$", "-test.v", "-test.count=1", "-test.timeout=50s")
	cmd.Env = append(os.Environ(), netnsChildEnv+"="+ns, netnsParentEnv+"="+parentNS)
	out, err := cmd.CombinedOutput()
	t.Logf("child output:\n%s", out)
	if err != nil {
		t.Fatalf("tests inside namespace %s failed: %v", ns, err)
	}
	if !strings.Contains(string(out), "--- PASS: TestInNetns") {
		t.Fatalf("the child ran no TestInNetns")
	}
}

// TestInNetns is the body run inside the namespace.
func TestInNetns(t *testing.T) {
	if os.Getenv(netnsChildEnv) == "" {
		t.Skip("runs only inside the namespace created by TestIntegrationNetns")
	}
	requireTestNetns(t)
	t.Run("EnsureBridge", testEnsureBridge)
	t.Run("EnsureBridgeConcurrent", testEnsureBridgeConcurrent)
	t.Run("EnsureBridgeNotBridge", testEnsureBridgeNotBridge)
	t.Run("OpenTap", testOpenTap)
	t.Run("OpenTapMissingBridge", testOpenTapMissingBridge)
	t.Run("OpenTapAdoptsPersistent", testOpenTapAdoptsPersistent)
	t.Run("TapOutlivesCallerWhileChildHoldsFd", testTapLifecycleWithChild)
	t.Run("DeleteLink", testDeleteLink)
	t.Run("CutTCP", testCutTCP)
}

// requireTestNetns fails the test unless this process's network namespace
// is the named one the parent created, and not the parent's own.
func requireTestNetns(t *testing.T) {
	t.Helper()
	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatalf("refusing to run: %v", err)
	}
	if parent := os.Getenv(netnsParentEnv); parent == "" || parent == self {
		t.Fatalf("refusing to run: in the parent's network namespace %q", self)
	}
	var a, b unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &a); err != nil {
		t.Fatalf("refusing to run: %v", err)
	}
	named := "/var/run/netns/" + os.Getenv(netnsChildEnv) // iproute2's NETNS_RUN_DIR
	if err := unix.Stat(named, &b); err != nil {
		t.Fatalf("refusing to run: %v", err)
	}
	if a.Dev != b.Dev || a.Ino != b.Ino {
		t.Fatalf("refusing to run: this process is not in namespace %s", named)
	}
}

func mustLink(t *testing.T, name string) netlink.Link {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatalf("LinkByName(%s): %v", name, err)
	}
	return l
}

func countAddr(t *testing.T, link netlink.Link, want string) int {
	t.Helper()
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, a := range addrs {
		if a.IPNet.String() == want {
			n++
		}
	}
	return n
}

func waitGone(t *testing.T, name string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		ok, err := LinkExists(name)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("link %s still exists", name)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func testEnsureBridge(t *testing.T) {
	ctx := context.Background()
	const br = "shtbr0"
	for i := range 2 {
		if err := EnsureBridge(ctx, br, "10.57.0.1/24"); err != nil {
			t.Fatalf("EnsureBridge #%d: %v", i+1, err)
		}
	}
	l := mustLink(t, br)
	if l.Type() != "bridge" {
		t.Fatalf("type %q, want bridge", l.Type())
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		t.Fatalf("bridge is not up")
	}
	if n := countAddr(t, l, "10.57.0.1/24"); n != 1 {
		t.Fatalf("address present %d times, want 1", n)
	}
	// Empty addr: ok, changes nothing. A second address is added.
	if err := EnsureBridge(ctx, br, ""); err != nil {
		t.Fatal(err)
	}
	if err := EnsureBridge(ctx, br, "10.58.0.1/24"); err != nil {
		t.Fatal(err)
	}
	if n := countAddr(t, l, "10.58.0.1/24"); n != 1 {
		t.Fatalf("second address present %d times, want 1", n)
	}
	// Same IP, other prefix length: refused with advice.
	err := EnsureBridge(ctx, br, "10.57.0.1/16")
	if err == nil || !strings.Contains(err.Error(), "ip addr del") {
		t.Fatalf("EnsureBridge with conflicting prefix: %v", err)
	}
	if err := EnsureBridge(ctx, br, "10.57.0.1"); err == nil {
		t.Fatal("EnsureBridge accepted an address without prefix")
	}
	if err := EnsureBridge(ctx, "this-name-is-too-long", ""); !errors.Is(err, ErrInvalidName) {
		t.Fatalf("long name: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := EnsureBridge(cctx, "shtbrc", ""); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled ctx: %v", err)
	}
}

func testEnsureBridgeConcurrent(t *testing.T) {
	ctx := context.Background()
	const br = "shtbr1"
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() { errs <- EnsureBridge(ctx, br, "10.59.0.1/24") })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("concurrent EnsureBridge: %v", err)
		}
	}
	if n := countAddr(t, mustLink(t, br), "10.59.0.1/24"); n != 1 {
		t.Fatalf("address present %d times, want 1", n)
	}
}

func testEnsureBridgeNotBridge(t *testing.T) {
	// A persistent tap stands in for "some other link": the dummy driver
	// is not in every kernel, tun is (we need it anyway).
	const name = "shtnotbr0"
	makePersistentTap(t, name)
	defer DeleteLink(context.Background(), name)
	err := EnsureBridge(context.Background(), name, "10.60.0.1/24")
	if !errors.Is(err, ErrNotBridge) {
		t.Fatalf("EnsureBridge on a dummy link: %v, want ErrNotBridge", err)
	}
	if _, err := OpenTap(context.Background(), "shtap9", name); !errors.Is(err, ErrNotBridge) {
		t.Fatalf("OpenTap onto a dummy link: %v, want ErrNotBridge", err)
	}
	if ok, _ := LinkExists("shtap9"); ok {
		t.Fatal("failed OpenTap left a tap behind")
	}
}

func tunFlags(t *testing.T, f *os.File) uint16 {
	t.Helper()
	ifr, err := unix.NewIfreq("")
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlIfreq(int(f.Fd()), unix.TUNGETIFF, ifr); err != nil {
		t.Fatalf("TUNGETIFF: %v", err)
	}
	return ifr.Uint16()
}

func testOpenTap(t *testing.T) {
	ctx := context.Background()
	const br = "shtbr2"
	if err := EnsureBridge(ctx, br, "10.61.0.1/24"); err != nil {
		t.Fatal(err)
	}
	tap := TapName("vm-open-tap")
	f, err := OpenTap(ctx, tap, br)
	if err != nil {
		t.Fatalf("OpenTap: %v", err)
	}
	closed := false
	defer func() {
		if !closed {
			f.Close()
		}
	}()
	if ok, err := LinkExists(tap); err != nil || !ok {
		t.Fatalf("LinkExists(%s) = %v, %v", tap, ok, err)
	}
	l := mustLink(t, tap)
	if got, want := l.Attrs().MasterIndex, mustLink(t, br).Attrs().Index; got != want {
		t.Fatalf("tap master index %d, want bridge's %d", got, want)
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		t.Fatal("tap is not up")
	}
	if l.Type() != "tuntap" {
		t.Fatalf("tap link type %q", l.Type())
	}
	flags := tunFlags(t, f)
	want := uint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if flags&want != want || flags&unix.IFF_PERSIST != 0 {
		t.Fatalf("tun flags %#x, want %#x set and IFF_PERSIST clear", flags, want)
	}
	// A second open while the first fd lives: busy, and the tap survives.
	if f2, err := OpenTap(ctx, tap, br); !errors.Is(err, ErrTapBusy) {
		if f2 != nil {
			f2.Close()
		}
		t.Fatalf("second OpenTap: %v, want ErrTapBusy", err)
	}
	if ok, _ := LinkExists(tap); !ok {
		t.Fatal("failed second OpenTap removed the tap")
	}
	// Closing the only fd removes the tap.
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	closed = true
	waitGone(t, tap)
}

func testOpenTapMissingBridge(t *testing.T) {
	_, err := OpenTap(context.Background(), "shtap8", "nosuchbr")
	if err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("OpenTap onto missing bridge: %v", err)
	}
	if ok, _ := LinkExists("shtap8"); ok {
		t.Fatal("failed OpenTap left a tap behind")
	}
}

// makePersistentTap creates a tap that outlives its fd.
func makePersistentTap(t *testing.T, name string) {
	t.Helper()
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	ifr, _ := unix.NewIfreq(name)
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
	err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
	if err == nil {
		err = unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1)
	}
	unix.Close(fd)
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := LinkExists(name); !ok {
		t.Fatal("persistent tap did not persist")
	}
}

func testOpenTapAdoptsPersistent(t *testing.T) {
	ctx := context.Background()
	const br, tap = "shtbr3", "shtap7"
	if err := EnsureBridge(ctx, br, ""); err != nil {
		t.Fatal(err)
	}
	// Make a persistent leftover, as a crashed older version might.
	makePersistentTap(t, tap)
	f, err := OpenTap(ctx, tap, br)
	if err != nil {
		DeleteLink(ctx, tap)
		t.Fatalf("OpenTap over a persistent leftover: %v", err)
	}
	if mustLink(t, tap).Attrs().MasterIndex != mustLink(t, br).Attrs().Index {
		t.Error("adopted tap not attached to the bridge")
	}
	f.Close()
	waitGone(t, tap)
}

func testTapLifecycleWithChild(t *testing.T) {
	ctx := context.Background()
	const br = "shtbr4"
	if err := EnsureBridge(ctx, br, ""); err != nil {
		t.Fatal(err)
	}
	tap := TapName("vm-child")
	f, err := OpenTap(ctx, tap, br)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sleep", "30")
	cmd.ExtraFiles = []*os.File{f}
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatal(err)
	}
	f.Close() // the caller's copy; the child keeps the tap alive
	time.Sleep(50 * time.Millisecond)
	if ok, _ := LinkExists(tap); !ok {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatal("tap vanished while the child still holds its fd")
	}
	_ = cmd.Process.Kill() // our own child, by pid
	_ = cmd.Wait()
	waitGone(t, tap)
}

func testDeleteLink(t *testing.T) {
	ctx := context.Background()
	const br = "shtbr5"
	if err := EnsureBridge(ctx, br, "10.62.0.1/24"); err != nil {
		t.Fatal(err)
	}
	if err := DeleteLink(ctx, br); err != nil {
		t.Fatal(err)
	}
	if ok, err := LinkExists(br); err != nil || ok {
		t.Fatalf("after DeleteLink: exists=%v err=%v", ok, err)
	}
	if err := DeleteLink(ctx, br); err != nil {
		t.Fatalf("DeleteLink of a missing link: %v", err)
	}
	if err := DeleteLink(ctx, "bad/name"); !errors.Is(err, ErrInvalidName) {
		t.Fatalf("DeleteLink(bad/name): %v", err)
	}
	// The bridge comes back cleanly after deletion, address and all.
	if err := EnsureBridge(ctx, br, "10.62.0.1/24"); err != nil {
		t.Fatal(err)
	}
	if n := countAddr(t, mustLink(t, br), "10.62.0.1/24"); n != 1 {
		t.Fatalf("address present %d times after re-create, want 1", n)
	}
}
