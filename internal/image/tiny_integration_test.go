package image

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shoalvm/shoal/internal/cloudinit"
)

// requireIntegration skips when the host cannot run the integration tests,
// except under CI=true where a missing prerequisite is a failure.
func requireIntegration(t *testing.T, tools ...string) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if _, _, err := FindCloudKernel(); err != nil {
		missing = append(missing, "linux-image-cloud-amd64")
	}
	if len(missing) == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("integration prerequisites missing under CI: %v", missing)
	}
	t.Skipf("integration prerequisites missing: %v", missing)
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// testNetns is a network namespace holding a bridge (10.99.0.1/24) and a
// tap for the guest. Nothing in it is routed anywhere.
type testNetns struct {
	name, tap string
}

func newTestNetns(t *testing.T) testNetns {
	t.Helper()
	var rnd [4]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		t.Fatal(err)
	}
	ns := testNetns{name: "shoaltest-img-" + hex.EncodeToString(rnd[:]), tap: "tap0"}
	run(t, "ip", "netns", "add", ns.name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns.name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v %s", ns.name, err, out)
		}
	})
	in := func(args ...string) { run(t, "ip", append([]string{"-n", ns.name}, args...)...) }
	in("link", "set", "lo", "up")
	in("link", "add", "br0", "type", "bridge")
	in("addr", "add", "10.99.0.1/24", "dev", "br0")
	in("link", "set", "br0", "up")
	in("tuntap", "add", "dev", ns.tap, "mode", "tap")
	in("link", "set", ns.tap, "master", "br0")
	in("link", "set", ns.tap, "up")
	return ns
}

// dialer returns a DialContext that connects from inside the namespace:
// the socket is created on a thread switched into it with setns(2).
func (ns testNetns) dialer() func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		type result struct {
			c   net.Conn
			err error
		}
		ch := make(chan result, 1)
		go func() {
			runtime.LockOSThread()
			self := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
			orig, err := os.Open(self)
			if err != nil {
				runtime.UnlockOSThread()
				ch <- result{nil, err}
				return
			}
			defer orig.Close()
			target, err := os.Open("/run/netns/" + ns.name)
			if err != nil {
				runtime.UnlockOSThread()
				ch <- result{nil, err}
				return
			}
			defer target.Close()
			if err := setns(target.Fd()); err != nil {
				runtime.UnlockOSThread()
				ch <- result{nil, err}
				return
			}
			var d net.Dialer
			c, err := d.DialContext(ctx, network, addr)
			if setns(orig.Fd()) == nil {
				runtime.UnlockOSThread() // else the thread dies with the goroutine
			}
			ch <- result{c, err}
		}()
		r := <-ch
		return r.c, r.err
	}
}

func setns(fd uintptr) error {
	if err := unix.Setns(int(fd), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("setns: %w", err)
	}
	return nil
}

// testVM is one QEMU process started inside the namespace.
type testVM struct {
	cmd     *exec.Cmd
	qmp     string
	console string
	exited  chan error
	start   time.Time
}

func startTestVM(t *testing.T, ns string, dir, tag string, art TinyArtifacts, cmdline string, drives []string, mac string) *testVM {
	t.Helper()
	vm := &testVM{
		qmp:     filepath.Join(dir, tag+".qmp"),
		console: filepath.Join(dir, tag+".console"),
		exited:  make(chan error, 1),
	}
	args := []string{}
	if ns != "" {
		args = append(args, "ip", "netns", "exec", ns)
	}
	args = append(args, "qemu-system-x86_64", "-accel", "tcg", "-m", "256",
		"-nodefaults", "-display", "none", "-no-user-config",
		"-serial", "file:"+vm.console,
		"-kernel", art.Kernel, "-initrd", art.Initrd, "-append", cmdline,
		"-qmp", "unix:"+vm.qmp+",server=on,wait=off")
	for _, d := range drives {
		args = append(args, "-drive", d)
	}
	if mac != "" {
		args = append(args, "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
			"-device", "virtio-net-pci,netdev=n0,mac="+mac)
	}
	vm.cmd = exec.Command(args[0], args[1:]...)
	stderr, err := os.Create(filepath.Join(dir, tag+".stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer stderr.Close()
	vm.cmd.Stdout, vm.cmd.Stderr = stderr, stderr
	vm.start = time.Now()
	if err := vm.cmd.Start(); err != nil {
		t.Fatalf("start qemu: %v", err)
	}
	go func() { vm.exited <- vm.cmd.Wait() }()
	t.Cleanup(func() {
		select {
		case <-vm.exited:
		default:
			_ = vm.cmd.Process.Kill() // our own child, by pid
			<-vm.exited
		}
		if t.Failed() {
			b, _ := os.ReadFile(vm.console)
			e, _ := os.ReadFile(filepath.Join(dir, tag+".stderr"))
			t.Logf("%s console:\n%s\nqemu stderr:\n%s", tag, b, e)
		}
	})
	return vm
}

// waitExit waits for QEMU to exit and returns how long that took.
func (vm *testVM) waitExit(t *testing.T, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	select {
	case err := <-vm.exited:
		vm.exited <- err // keep it for Cleanup
		if err != nil {
			t.Errorf("qemu exited with %v", err)
		}
		return time.Since(start)
	case <-time.After(limit):
		t.Fatalf("qemu did not exit within %v", limit)
		return 0
	}
}

// qmpPowerdown performs a minimal QMP exchange: greeting, capabilities,
// system_powerdown.
func qmpPowerdown(t *testing.T, sock string) {
	t.Helper()
	c, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		t.Fatalf("qmp dial: %v", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	readReply := func(what string) {
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				t.Fatalf("qmp %s: %v", what, err)
			}
			var m map[string]json.RawMessage
			if err := json.Unmarshal(line, &m); err != nil {
				t.Fatalf("qmp %s: bad json %q: %v", what, line, err)
			}
			if _, ok := m["error"]; ok {
				t.Fatalf("qmp %s: %s", what, line)
			}
			if _, ok := m["return"]; ok {
				return
			}
			if _, ok := m["QMP"]; ok && what == "greeting" {
				return
			}
		}
	}
	readReply("greeting")
	for _, cmd := range []string{"qmp_capabilities", "system_powerdown"} {
		if _, err := fmt.Fprintf(c, "{\"execute\":%q}\n", cmd); err != nil {
			t.Fatalf("qmp %s: %v", cmd, err)
		}
		readReply(cmd)
	}
}

var replyRe = regexp.MustCompile(`^boot=([0-9a-f]+) count=([0-9]+) disk=([0-9]+)\n$`)

type reply struct {
	boot        string
	count, disk int
}

func parseReply(t *testing.T, body string) reply {
	t.Helper()
	m := replyRe.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("reply %q does not match %s", body, replyRe)
	}
	c, _ := strconv.Atoi(m[2])
	d, _ := strconv.Atoi(m[3])
	return reply{m[1], c, d}
}

// wgetInNS fetches url with busybox wget run inside the namespace.
// (busybox 1.35's wget -T crashes, hence the context timeout.)
func wgetInNS(ns, url string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "busybox", "wget", "-qO-", url).Output()
	return string(out), err
}

// waitServing polls the guest until it answers and returns the first reply.
func waitServing(t *testing.T, ns string, vm *testVM, url string, limit time.Duration) (string, time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		select {
		case err := <-vm.exited:
			vm.exited <- err
			t.Fatalf("qemu exited before serving: %v", err)
		default:
		}
		if out, err := wgetInNS(ns, url); err == nil {
			return out, time.Since(vm.start)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("guest did not serve %s within %v", url, limit)
	return "", 0
}

func TestTinyBootIntegration(t *testing.T) {
	requireIntegration(t, "qemu-system-x86_64", "qemu-img", "genisoimage", "ip", "busybox")
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	art, err := BuildTiny(ctx, testLogger(t), filepath.Join(dir, "tiny"), TinyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	overlay := filepath.Join(dir, "overlay.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", art.Disk, overlay, "1G")
	const mac = "52:54:00:99:00:0a"
	seedPath := filepath.Join(dir, "seed.iso")
	err = cloudinit.WriteSeed(ctx, seedPath, cloudinit.Seed{
		InstanceID: "i-tinytest", Hostname: "tinytest", MAC: mac,
		Address: "10.99.0.10/24", Gateway: "10.99.0.1", DNS: []string{"10.99.0.1"},
		// Runs after the network is up; httpd serves /www statically.
		UserData: []byte("#!/bin/sh\necho \"$(hostname) $(cat /etc/resolv.conf)\" >/www/ud.txt\n"),
	})
	if err != nil {
		t.Fatal(err)
	}
	ns := newTestNetns(t)
	drives := []string{
		"file=" + overlay + ",if=virtio,format=qcow2",
		"file=" + seedPath + ",if=virtio,format=raw,readonly=on",
	}
	const url = "http://10.99.0.10/"

	// First boot.
	vm1 := startTestVM(t, ns.name, dir, "boot1", art, art.Cmdline, drives, mac)
	first, took := waitServing(t, ns.name, vm1, url, 60*time.Second)
	t.Logf("boot 1: serving %.1fs after qemu start", took.Seconds())
	r1 := parseReply(t, first)
	if r1.count != 1 || r1.disk != 1 {
		t.Errorf("first reply %+v: want count=1 disk=1 on a fresh overlay", r1)
	}
	r2 := parseReply(t, mustWget(t, ns.name, url))
	// The third request goes through Go's HTTP client.
	client := &http.Client{Transport: &http.Transport{DialContext: ns.dialer()}, Timeout: 10 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("http.Get: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/plain" ||
		resp.ContentLength != int64(len(body)) || !resp.Close {
		t.Errorf("response: status %d type %q length %d (body %d) close %v",
			resp.StatusCode, resp.Header.Get("Content-Type"), resp.ContentLength, len(body), resp.Close)
	}
	r3 := parseReply(t, string(body))
	for i, r := range []reply{r2, r3} {
		prev := []reply{r1, r2}[i]
		if r.boot != r1.boot || r.count != prev.count+1 || r.disk != prev.disk+1 {
			t.Errorf("reply %d = %+v after %+v: want same boot, count and disk +1", i+2, r, prev)
		}
	}
	// Concurrent requests are serialized: every count and disk value is
	// handed out exactly once.
	const parallel = 8
	replies := make(chan string, parallel)
	for range parallel {
		go func() {
			resp, err := client.Get(url)
			if err != nil {
				replies <- "error: " + err.Error()
				return
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			replies <- string(b)
		}()
	}
	seenCount, seenDisk := map[int]bool{}, map[int]bool{}
	for range parallel {
		r := parseReply(t, <-replies)
		seenCount[r.count], seenDisk[r.disk] = true, true
	}
	for i := 1; i <= parallel; i++ {
		if !seenCount[r3.count+i] || !seenDisk[r3.disk+i] {
			t.Errorf("concurrent replies: counts %v disks %v, want %d..%d", seenCount, seenDisk, r3.count+1, r3.count+parallel)
			break
		}
	}
	last := reply{r1.boot, r3.count + parallel, r3.disk + parallel}

	// user-data ran, after hostname and DNS were set.
	var ud string
	for i := 0; i < 25; i++ {
		if ud, err = wgetInNS(ns.name, "http://10.99.0.10/ud.txt"); err == nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if ud != "tinytest nameserver 10.99.0.1\n" {
		t.Errorf("user-data output %q (err %v)", ud, err)
	}

	console, _ := os.ReadFile(vm1.console)
	if !strings.Contains(string(console), TinyBanner+"10.99.0.10") {
		t.Errorf("console lacks the banner %q", TinyBanner+"10.99.0.10")
	}

	qmpPowerdown(t, vm1.qmp)
	d := vm1.waitExit(t, 15*time.Second)
	t.Logf("boot 1: qemu exited %.1fs after system_powerdown", d.Seconds())

	// Second boot from the same overlay: the disk counter continues.
	vm2 := startTestVM(t, ns.name, dir, "boot2", art, art.Cmdline, drives, mac)
	first, took = waitServing(t, ns.name, vm2, url, 60*time.Second)
	t.Logf("boot 2: serving %.1fs after qemu start", took.Seconds())
	r4 := parseReply(t, first)
	if r4.boot == r1.boot || r4.count != 1 || r4.disk != last.disk+1 {
		t.Errorf("after reboot %+v (before %+v): want new boot id, count=1, disk=%d", r4, last, last.disk+1)
	}
	time.Sleep(time.Second) // a record or two of the disk log
	qmpPowerdown(t, vm2.qmp)
	vm2.waitExit(t, 15*time.Second)

	// The disk write log names the two boots, one after the other.
	flat := filepath.Join(dir, "overlay.raw")
	run(t, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", overlay, flat)
	data, err := os.ReadFile(flat)
	if err != nil {
		t.Fatal(err)
	}
	l, err := ParseDiskLog(data)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("disk log: %s", l.Summary())
	if len(l.Runs) != 2 || l.Runs[0].Boot != r1.boot || l.Runs[1].Boot != r4.boot || len(l.Problems) > 0 {
		t.Errorf("disk log %s: want boot %s then boot %s, no problem", l.Summary(), r1.boot, r4.boot)
	}
}

func mustWget(t *testing.T, ns, url string) string {
	t.Helper()
	out, err := wgetInNS(ns, url)
	if err != nil {
		t.Fatalf("wget %s: %v", url, err)
	}
	return out
}

func TestTinyProbeIntegration(t *testing.T) {
	requireIntegration(t, "qemu-system-x86_64", "qemu-img")
	t.Parallel()
	dir := t.TempDir()
	art, err := BuildTiny(context.Background(), testLogger(t), filepath.Join(dir, "tiny"), TinyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	vm := startTestVM(t, "", dir, "probe", art, art.Cmdline+" "+TinyProbeArg, nil, "")
	vm.waitExit(t, 30*time.Second)
	t.Logf("probe boot: qemu exited %.1fs after start", time.Since(vm.start).Seconds())
	out, err := os.ReadFile(vm.console)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), TinyProbeOK) {
		t.Errorf("console lacks %s:\n%s", TinyProbeOK, out)
	}
}
