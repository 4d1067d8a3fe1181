package qemu

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Principle 4: a QEMU launched by a program that then exits keeps running,
// and a later program attaches to it from the state dir.
func TestLaunchOutlivesLauncherAndAttach(t *testing.T) {
	qemuBinary(t)
	dir := testDir(t)
	ctx := testCtx(t)
	log := testLog(t)

	helper := exec.Command(os.Args[0], "-test.run=^$")
	helper.Env = append(os.Environ(), helperDirEnv+"="+dir)
	helper.Stderr = t.Output()
	out, err := helper.Output()
	if err != nil {
		t.Fatalf("launcher helper: %v", err)
	}
	launchedPid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("helper printed %q", out)
	}
	// The launcher has exited and been waited for.

	p, err := Attach(ctx, log, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Kill()
	if p.Pid != launchedPid {
		t.Fatalf("attached pid %d, helper launched %d", p.Pid, launchedPid)
	}
	ourSid, _ := unix.Getsid(0)
	if sid, err := unix.Getsid(p.Pid); err != nil || sid == ourSid {
		t.Errorf("qemu session = %d (%v), want its own, not ours", sid, err)
	}
	if st, err := p.Status(ctx); err != nil || (st != "prelaunch" && st != "paused") {
		t.Fatalf("status = %q, %v; want prelaunch or paused", st, err)
	}
	if err := p.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := p.Status(ctx); err != nil || st != "running" {
		t.Fatalf("after Resume: %q, %v", st, err)
	}
	if err := p.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := p.Status(ctx); err != nil || st != "paused" {
		t.Fatalf("after Pause: %q, %v", st, err)
	}

	// Close leaves the VM running; attach again.
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	p, err = Attach(ctx, log, dir)
	if err != nil {
		t.Fatal(err)
	}

	// A second launch for the same dir is refused.
	if _, err := Launch(ctx, log, qemuBinary(t), testConfig(dir, true)); !errors.Is(err, ErrAlreadyRunning) {
		t.Fatalf("second Launch: err = %v, want ErrAlreadyRunning", err)
	}

	start := time.Now()
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Exited():
	default:
		t.Fatal("Exited not closed after Kill")
	}
	t.Logf("Kill took %s", time.Since(start))
	for _, name := range []string{PidFile, QMPSocket, ConsoleSocket} {
		if _, err := os.Stat(filepath.Join(dir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still there after Kill: %v", name, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, ConsoleLog)); err != nil {
		t.Errorf("console.log should stay: %v", err)
	}
	if _, err := Attach(ctx, log, dir); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("Attach after Kill: err = %v, want ErrNotRunning", err)
	}
	if ok, _ := isOurQEMU(p.Pid, dir); ok {
		t.Errorf("pid %d still looks like our QEMU after Kill", p.Pid)
	}
}

func TestAttachRefusesWhatIsNotOurQEMU(t *testing.T) {
	ctx := testCtx(t)
	log := testLog(t)
	dir := testDir(t)

	if _, err := Attach(ctx, log, dir); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("no pidfile: err = %v", err)
	}

	writePid := func(s string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, PidFile), []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writePid("garbage\n")
	if _, err := Attach(ctx, log, dir); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("garbage pidfile: err = %v", err)
	}

	// A live process that is not QEMU (as after pid reuse).
	sleep := exec.Command("sleep", "30")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sleep.Process.Kill(); _ = sleep.Wait() }()
	// Right after exec the kernel shows an empty cmdline for a moment.
	waitFile(t, "/proc/"+strconv.Itoa(sleep.Process.Pid)+"/cmdline", "sleep", 2*time.Second)
	writePid(strconv.Itoa(sleep.Process.Pid) + "\n")
	_, err := Attach(ctx, log, dir)
	if !errors.Is(err, ErrNotRunning) || !strings.Contains(err.Error(), "not a QEMU") {
		t.Fatalf("pidfile naming sleep: err = %v", err)
	}

	// A QEMU, but another VM's.
	other := launch(t, testConfig(testDir(t), true))
	writePid(strconv.Itoa(other.Pid))
	_, err = Attach(ctx, log, dir)
	if !errors.Is(err, ErrNotRunning) || !strings.Contains(err.Error(), "not the one for") {
		t.Fatalf("pidfile naming another VM's QEMU: err = %v", err)
	}
	// Launch treats such a pidfile as stale and goes ahead.
	p := launch(t, testConfig(dir, true))
	if p.Pid == other.Pid {
		t.Fatal("launched pid equals the other VM's")
	}

	for _, pid := range []int{sleep.Process.Pid, other.Pid} {
		if err := syscall.Kill(pid, 0); err != nil {
			t.Errorf("pid %d was harmed: %v", pid, err)
		}
	}
}

func TestLaunchErrorIncludesQEMUMessage(t *testing.T) {
	dir := testDir(t)
	cfg := testConfig(dir, true)
	cfg.Disks = []Disk{{Path: "/nonexistent/shoal-test/disk.img"}}
	start := time.Now()
	_, err := Launch(testCtx(t), testLog(t), qemuBinary(t), cfg)
	if err == nil {
		t.Fatal("Launch with a missing disk succeeded")
	}
	t.Logf("error after %s: %v", time.Since(start), err)
	for _, want := range []string{"Could not open", "/nonexistent/shoal-test/disk.img", "No such file"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q", want)
		}
	}
	logText, _ := os.ReadFile(filepath.Join(dir, LogFile))
	if !strings.Contains(string(logText), "Could not open") {
		t.Errorf("qemu.log lacks the error: %q", logText)
	}
	if pids := findOurQEMUs(dir); len(pids) > 0 {
		t.Errorf("QEMUs left after failed launch: %v", pids)
	}
	for _, name := range []string{PidFile, QMPSocket, ConsoleSocket} {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			t.Errorf("%s left after failed launch", name)
		}
	}

	// A missing binary is reported too.
	_, err = Launch(testCtx(t), testLog(t), "/nonexistent/qemu", testConfig(dir, true))
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/qemu") {
		t.Errorf("missing binary: err = %v", err)
	}
}

// A guest without an OS ignores ACPI powerdown, so Stop must kill.
func TestStopFallsBackToKill(t *testing.T) {
	p := launch(t, testConfig(testDir(t), false))
	ctx := testCtx(t)
	if st, err := p.Status(ctx); err != nil || st != "running" {
		t.Fatalf("status = %q, %v", st, err)
	}
	start := time.Now()
	if err := p.Stop(ctx, 500*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if took < 500*time.Millisecond || took > 5*time.Second {
		t.Errorf("Stop took %s, want a little over the 500ms timeout", took)
	}
	select {
	case <-p.Exited():
	default:
		t.Fatal("not exited after Stop")
	}
	if _, err := os.Stat(filepath.Join(p.Dir, PidFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pidfile after Stop: %v", err)
	}
}

// Exited fires however QEMU goes away, here by the QMP quit command, and
// QMP then fails promptly.
func TestExitedWhenQEMUQuits(t *testing.T) {
	p := launch(t, testConfig(testDir(t), true))
	ctx := testCtx(t)
	if err := p.QMP().Execute(ctx, "quit", nil, nil); err != nil {
		t.Logf("quit: %v", err) // the reply may race with the exit
	}
	select {
	case <-p.Exited():
	case <-time.After(5 * time.Second):
		t.Fatal("Exited not closed within 5s of quit")
	}
	if _, err := p.Status(ctx); err == nil {
		t.Fatal("Status works after QEMU quit")
	}
	// A new QEMU takes over the dir; the old Process must not disturb it.
	p2 := launch(t, testConfig(p.Dir, true))
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := p.Stop(ctx, time.Millisecond); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{PidFile, QMPSocket, ConsoleSocket} {
		if _, err := os.Stat(filepath.Join(p.Dir, name)); err != nil {
			t.Errorf("old Process removed the new QEMU's %s: %v", name, err)
		}
	}
	if st, err := p2.Status(ctx); err != nil || st == "" {
		t.Fatalf("new QEMU: %q, %v", st, err)
	}
}

// Disks are attached as virtio-blk with their serial and read-only flag,
// and the serial console reaches console.log.
func TestDisksAndConsole(t *testing.T) {
	dir := testDir(t)
	raw := filepath.Join(dir, "data.img")
	seed := filepath.Join(dir, "seed.img")
	for _, f := range []string{raw, seed} {
		if err := os.WriteFile(f, make([]byte, 1<<20), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg := testConfig(dir, false)
	cfg.Kernel = multibootKernel(t, "hello from the guest\n")
	cfg.Disks = []Disk{{Path: raw, Serial: "data-1"}, {Path: seed, ReadOnly: true}}
	if _, err := exec.LookPath("qemu-img"); err == nil {
		q := filepath.Join(dir, "q.qcow2")
		if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", q, "16M").CombinedOutput(); err != nil {
			t.Fatalf("qemu-img: %v: %s", err, out)
		}
		cfg.Disks = append(cfg.Disks, Disk{Path: q, Format: "qcow2"})
	}
	p := launch(t, cfg)

	waitFile(t, filepath.Join(dir, ConsoleLog), "hello from the guest", 10*time.Second)

	var blocks []struct {
		Qdev     string `json:"qdev"`
		Inserted struct {
			NodeName string `json:"node-name"`
			RO       bool   `json:"ro"`
			Drv      string `json:"drv"`
			File     string `json:"file"`
		} `json:"inserted"`
	}
	if err := p.QMP().Execute(testCtx(t), "query-block", nil, &blocks); err != nil {
		t.Fatal(err)
	}
	if len(blocks) != len(cfg.Disks) {
		t.Fatalf("query-block: %d devices, want %d: %+v", len(blocks), len(cfg.Disks), blocks)
	}
	for i, b := range blocks {
		d := cfg.Disks[i]
		if !strings.Contains(b.Qdev, "virtio-disk"+strconv.Itoa(i)) || b.Inserted.RO != d.ReadOnly ||
			b.Inserted.File != d.Path {
			t.Errorf("disk %d: %+v, want %+v", i, b, d)
		}
	}
	var serial string
	if err := p.QMP().Execute(testCtx(t), "qom-get",
		map[string]string{"path": "/machine/peripheral/virtio-disk0", "property": "serial"}, &serial); err != nil {
		t.Fatal(err)
	}
	if serial != "data-1" {
		t.Errorf("serial = %q", serial)
	}

	// QEMU locks images: a second VM cannot open the disk for writing.
	other := testConfig(testDir(t), true)
	other.Disks = []Disk{{Path: raw}}
	_, err := Launch(testCtx(t), testLog(t), qemuBinary(t), other)
	if err == nil || !strings.Contains(err.Error(), "lock") {
		t.Errorf("second writer of %s: err = %v, want a lock error", raw, err)
	}

	// The console socket takes a client.
	conn, err := net.Dial("unix", filepath.Join(dir, ConsoleSocket))
	if err != nil {
		t.Fatalf("console socket: %v", err)
	}
	conn.Close()
}

// A NIC's tap fd passes through -daemonize as fd 3. The tap lives in a
// network namespace made for the test, and carries no traffic.
func TestNICTapFD(t *testing.T) {
	qemuBinary(t)
	tap, err := tapInNewNetns("sqtap0")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("cannot make a tap in a new netns: %v", err)
		}
		t.Skipf("cannot make a tap in a new netns: %v", err)
	}
	defer tap.Close()
	cfg := testConfig(testDir(t), true)
	cfg.NICs = []NIC{{MAC: "52:54:00:5a:00:01", TapFD: tap}}
	p := launch(t, cfg)
	var mac string
	if err := p.QMP().Execute(testCtx(t), "qom-get",
		map[string]string{"path": "/machine/peripheral/net0-dev", "property": "mac"}, &mac); err != nil {
		t.Fatal(err)
	}
	if mac != "52:54:00:5a:00:01" {
		t.Errorf("mac = %q", mac)
	}

	noFD := testConfig(testDir(t), true)
	noFD.NICs = []NIC{{MAC: "52:54:00:5a:00:02"}}
	if _, err := Launch(testCtx(t), testLog(t), qemuBinary(t), noFD); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("NIC without tap fd: err = %v", err)
	}
}

// tapInNewNetns opens a tap device inside a fresh network namespace, on a
// thread that is thrown away afterwards. The open tap keeps the namespace.
func tapInNewNetns(name string) (*os.File, error) {
	type result struct {
		f   *os.File
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with us
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			ch <- result{err: err}
			return
		}
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			ch <- result{err: err}
			return
		}
		ifr, err := unix.NewIfreq(name)
		if err == nil {
			ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
			err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
		}
		if err != nil {
			unix.Close(fd)
			ch <- result{err: err}
			return
		}
		ch <- result{f: os.NewFile(uintptr(fd), "tap")}
	}()
	r := <-ch
	return r.f, r.err
}

func TestLaunchCancelled(t *testing.T) {
	dir := testDir(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Launch(ctx, testLog(t), qemuBinary(t), testConfig(dir, true)); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	// Cancelled while QEMU initialises.
	ctx, cancel = context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := Launch(ctx, testLog(t), qemuBinary(t), testConfig(dir, true)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want context.DeadlineExceeded", err)
	}
	// Give a daemon that escaped the parent's death time to exit by itself.
	deadline := time.Now().Add(3 * time.Second)
	for len(findOurQEMUs(dir)) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if pids := findOurQEMUs(dir); len(pids) > 0 {
		t.Fatalf("cancelled launch left QEMU %v", pids)
	}
}

// Two launches racing for one dir: exactly one QEMU results.
func TestConcurrentLaunchOneWins(t *testing.T) {
	dir := testDir(t)
	bin := qemuBinary(t)
	type result struct {
		p   *Process
		err error
	}
	results := make(chan result, 2)
	for range 2 {
		go func() {
			p, err := Launch(testCtx(t), testLog(t), bin, testConfig(dir, true))
			results <- result{p, err}
		}()
	}
	var won int
	for range 2 {
		r := <-results
		if r.err == nil {
			won++
			t.Cleanup(func() { _ = r.p.Kill() })
		} else if !errors.Is(r.err, ErrAlreadyRunning) {
			t.Errorf("losing launch: err = %v, want ErrAlreadyRunning", r.err)
		}
	}
	if won != 1 {
		t.Fatalf("%d launches succeeded, want 1", won)
	}
	if pids := findOurQEMUs(dir); len(pids) != 1 {
		t.Fatalf("QEMUs for the dir: %v", pids)
	}
}

// Without pidfds (old kernels) liveness is polled from /proc, and Kill
// re-checks identity before signalling.
func TestWithoutPidfd(t *testing.T) {
	usePidfd = false
	defer func() { usePidfd = true }()
	p := launch(t, testConfig(testDir(t), true))
	if p.h.pidfd != nil {
		t.Fatal("pidfd in use")
	}
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Exited():
	default:
		t.Fatal("not exited after Kill")
	}

	p = launch(t, testConfig(testDir(t), true))
	if err := p.QMP().Execute(testCtx(t), "quit", nil, nil); err != nil {
		t.Logf("quit: %v", err)
	}
	select {
	case <-p.Exited():
	case <-time.After(5 * time.Second):
		t.Fatal("Exited not closed within 5s of quit")
	}
}
