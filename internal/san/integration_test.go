package san

// Integration tests against a real tgtd, as root: each test makes its own
// network namespace (loopback only, no route out), runs tgtd in it
// through "ip netns exec", and reaches the LUNs with QEMU's own iSCSI
// initiator (qemu-io and qemu-img of qemu-block-extra, libiscsi) run in
// the same namespace, with CHAP and Shoal's initiator names.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/pool"
)

const (
	testUser   = "shoal"
	testSecret = "s3cret,of=the-san"
	mib        = int64(1 << 20)
)

func requireRoot(t *testing.T) {
	t.Helper()
	why := ""
	if os.Geteuid() != 0 {
		why = "needs root (network namespaces, tgtd)"
	}
	for _, bin := range []string{"ip", "tgtd", "qemu-io", "qemu-img"} {
		if _, err := exec.LookPath(bin); err != nil && why == "" {
			why = "needs " + bin + " (make deps)"
		}
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s; under CI this test must run", why)
	}
	t.Skip(why)
}

var netnsSeq atomic.Int32

// newNetns makes a network namespace with only its loopback up.
func newNetns(t *testing.T) string {
	t.Helper()
	ns := fmt.Sprintf("shoal-san-%d-%d", os.Getpid(), netnsSeq.Add(1))
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", ns, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", ns, err, out)
		}
	})
	if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up in %s: %v: %s", ns, err, out)
	}
	return ns
}

func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// lab is one SAN under test: tgtd in namespace ns on 127.0.0.1:3260.
type lab struct {
	t       *testing.T
	ns      string
	dir     string // the volumes
	run     string // tgtd's run dir
	secrets string // secret files for the initiators
	d       *Daemon
	s       *SAN
}

func newLab(t *testing.T) *lab {
	requireRoot(t)
	l := &lab{t: t, ns: newNetns(t), dir: t.TempDir(), run: t.TempDir(), secrets: t.TempDir()}
	l.start()
	return l
}

// start starts tgtd and the SAN on it (again, after a kill).
func (l *lab) start() {
	t := l.t
	ctx := context.Background()
	d, err := StartDaemon(ctx, DaemonConfig{Listen: "127.0.0.1:3260", RunDir: l.run,
		Wrap: []string{"ip", "netns", "exec", l.ns}, Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Stop(context.Background()); err != nil {
			t.Errorf("stop tgtd: %v", err)
		}
	})
	s, err := New(ctx, Config{Dir: l.dir, CHAPUser: testUser, CHAPSecret: testSecret, Log: testLog(t)}, d)
	if err != nil {
		t.Fatal(err)
	}
	l.d, l.s = d, s
}

// volume creates a volume that hosts may reach.
func (l *lab) volume(id string, size int64, hosts ...string) {
	l.t.Helper()
	ctx := context.Background()
	if err := l.s.Create(ctx, pool.Volume{ID: id, SizeBytes: size}); err != nil {
		l.t.Fatal(err)
	}
	if err := l.s.SetAllowed(ctx, id, hosts); err != nil {
		l.t.Fatal(err)
	}
}

// opts is the --image-opts of volume id for host, with secret file sf.
func (l *lab) opts(id, host, secretFile string) []string {
	return []string{"--object", "secret,id=chap,file=" + secretFile, "--image-opts",
		"driver=iscsi,transport=tcp,portal=127.0.0.1:3260,target=" + TargetName(id) +
			",lun=1,user=" + testUser + ",password-secret=chap,initiator-name=" + InitiatorName(host)}
}

func (l *lab) secretFile(secret string) string {
	f, err := os.CreateTemp(l.secrets, "chap-*")
	if err != nil {
		l.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(secret); err != nil {
		l.t.Fatal(err)
	}
	return f.Name()
}

// qemuIO runs qemu-io commands on volume id as host, with secret.
func (l *lab) qemuIO(id, host, secret string, cmds ...string) (string, error) {
	args := append([]string{"netns", "exec", l.ns, "qemu-io"}, l.opts(id, host, l.secretFile(secret))...)
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	return string(out), err
}

// mustIO runs qemu-io commands that must all succeed.
func (l *lab) mustIO(id, host string, cmds ...string) string {
	l.t.Helper()
	out, err := l.qemuIO(id, host, testSecret, cmds...)
	if err != nil || strings.Contains(out, "fail") || strings.Contains(out, "Pattern verification failed") {
		l.t.Fatalf("qemu-io %v on %s as %s: %v: %s", cmds, id, host, err, out)
	}
	return out
}

// size is the virtual size qemu-img sees of volume id, as host.
func (l *lab) size(id, host string) string {
	args := append([]string{"netns", "exec", l.ns, "qemu-img", "info"}, l.opts(id, host, l.secretFile(testSecret))...)
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		l.t.Fatalf("qemu-img info: %v: %s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "virtual size: "); ok {
			return v
		}
	}
	l.t.Fatalf("qemu-img info shows no size: %s", out)
	return ""
}

func (l *lab) targetNames() []string {
	ts, err := l.s.targets(context.Background())
	if err != nil {
		l.t.Fatal(err)
	}
	var out []string
	for _, t := range ts {
		out = append(out, t.Name)
	}
	return out
}

// session is a qemu-io kept running, as a QEMU keeps its disk open.
type session struct {
	t     *testing.T
	cmd   *exec.Cmd
	stdin io.WriteCloser
	mu    sync.Mutex
	out   bytes.Buffer
}

func (l *lab) openSession(id, host string) *session {
	t := l.t
	args := append([]string{"netns", "exec", l.ns, "qemu-io"}, l.opts(id, host, l.secretFile(testSecret))...)
	s := &session{t: t, cmd: exec.Command("ip", args...)}
	var err error
	if s.stdin, err = s.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	s.cmd.Stdout = writerFunc(s.write)
	s.cmd.Stderr = writerFunc(s.write)
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = s.cmd.Process.Kill() // by its pid
		_ = s.cmd.Wait()
	})
	return s
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func (s *session) write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.Write(p)
}

func (s *session) output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.String()
}

// do sends one command and waits up to wait for want to appear n times
// in the output; it says whether it did.
func (s *session) do(cmd, want string, n int, wait time.Duration) bool {
	if _, err := io.WriteString(s.stdin, cmd+"\n"); err != nil {
		s.t.Fatalf("qemu-io %q: %v", cmd, err)
	}
	end := time.Now().Add(wait)
	for time.Now().Before(end) {
		if strings.Count(s.output(), want) >= n {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

func TestSANVolumeLifecycle(t *testing.T) {
	l := newLab(t)
	ctx := context.Background()
	id := "0a1b2c"
	if err := l.s.Create(ctx, pool.Volume{ID: id, SizeBytes: 64 * mib}); err != nil {
		t.Fatal(err)
	}
	if err := l.s.Create(ctx, pool.Volume{ID: id, SizeBytes: 64 * mib}); err != nil {
		t.Fatalf("create again: %v", err)
	}
	if err := l.s.Create(ctx, pool.Volume{ID: id, SizeBytes: 128 * mib}); !errors.Is(err, api.ErrConflict) {
		t.Fatalf("create again with another size: %v, want a conflict", err)
	}
	if err := l.s.SetAllowed(ctx, id, []string{"h1"}); err != nil {
		t.Fatal(err)
	}

	l.mustIO(id, "h1", "write -P 0x5a 0 1M", "read -P 0x5a 0 1M")
	if out, err := l.qemuIO(id, "h1", "a-wrong-secret-1", "read 0 4k"); err == nil || !strings.Contains(out, "Authentication failure") {
		t.Fatalf("login with a wrong secret: %v: %s", err, out)
	}
	if out, err := l.qemuIO(id, "h2", testSecret, "read 0 4k"); err == nil || !strings.Contains(out, "Failed to log in") {
		t.Fatalf("login of an initiator not on the list: %v: %s", err, out)
	}

	// Too big: refused with the free space named, nothing made.
	c, err := l.s.Capacity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c.SizeBytes <= 0 || c.FreeBytes <= 0 || c.UsedBytes < 64*mib {
		t.Fatalf("capacity %+v: the 64 MiB volume must count as used", c)
	}
	huge := (c.SizeBytes/512 + 1) * 512 // more than the filesystem, whatever others write meanwhile
	err = l.s.Create(ctx, pool.Volume{ID: "ff", SizeBytes: huge})
	if !errors.Is(err, api.ErrCapacity) || !strings.Contains(err.Error(), " free") {
		t.Fatalf("create of %d bytes in a pool of %d: %v, want a capacity error naming the free space", huge, c.SizeBytes, err)
	}
	t.Logf("refused as it should be: %v", err)
	if _, err := os.Stat(filepath.Join(l.dir, "vol-ff.img")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a refused volume left a file: %v", err)
	}
	if err := l.s.Create(ctx, pool.Volume{ID: "../x", SizeBytes: mib}); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("bad id: %v", err)
	}

	// Resize while a session is open: tgtd answers the new size, the open
	// session reads it again (as QEMU's block_resize does) and writes there.
	sess := l.openSession(id, "h1")
	if !sess.do("write -P 0x11 0 4k", "wrote 4096/4096", 1, 10*time.Second) {
		t.Fatalf("write before resize: %s", sess.output())
	}
	if err := l.s.Resize(ctx, id, 128*mib); err != nil {
		t.Fatal(err)
	}
	if err := l.s.Resize(ctx, id, 128*mib); err != nil {
		t.Fatalf("resize again: %v", err)
	}
	if err := l.s.Resize(ctx, id, 32*mib); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("shrink: %v", err)
	}
	if got := l.size(id, "h1"); !strings.HasPrefix(got, "128 MiB") {
		t.Fatalf("size after resize: %s", got)
	}
	if !sess.do("truncate 128M", "qemu-io> ", 3, 10*time.Second) ||
		!sess.do("write -P 0x22 100M 4k", "wrote 4096/4096", 2, 10*time.Second) {
		t.Fatalf("the open session does not see the new size: %s", sess.output())
	}
	t.Logf("the open session: %s", sess.output())
	t.Logf("after resize: %s", l.mustIO(id, "h1", "read -P 0x22 100M 4k", "read -P 0x11 0 4k", "read -P 0x5a 4k 1020k"))

	if err := l.s.Delete(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := l.s.Delete(ctx, id); err != nil {
		t.Fatalf("delete again: %v", err)
	}
	if _, err := os.Stat(filepath.Join(l.dir, "vol-"+id+".img")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("file after delete: %v", err)
	}
	if names := l.targetNames(); len(names) != 0 {
		t.Fatalf("targets after delete: %v", names)
	}
	if ents, _ := os.ReadDir(l.dir); len(ents) != 0 {
		t.Fatalf("files after delete: %v", ents)
	}
}

func TestSANFence(t *testing.T) {
	l := newLab(t)
	ctx := context.Background()
	id := "fe0c"
	l.volume(id, 16*mib, "h1", "h2")
	old := l.openSession(id, "h1")
	if !old.do("write -P 0x11 0 4k", "wrote 4096/4096", 1, 10*time.Second) {
		t.Fatalf("write before fence: %s", old.output())
	}

	if got, err := l.s.Sessions(ctx); err != nil || !reflect.DeepEqual(got, map[string][]string{id: {"h1"}}) {
		t.Fatalf("sessions before fence: %v %v", got, err)
	}
	if err := l.s.Fence(ctx, "h1", []string{id, "dead"}); err != nil {
		t.Fatal(err)
	}
	// The fenced writer's next write never completes (libiscsi retries its
	// login, which is refused) and never reaches the LUN.
	if old.do("write -P 0x22 0 4k", "wrote 4096/4096", 2, 3*time.Second) {
		t.Fatalf("a fenced session still writes: %s", old.output())
	}
	if out, err := l.qemuIO(id, "h1", testSecret, "read 0 4k"); err == nil {
		t.Fatalf("a fenced initiator logged in: %s", out)
	}
	l.mustIO(id, "h2", "read -P 0x11 0 4k", "write -P 0x33 4k 4k")
	if got, err := l.s.Sessions(ctx); err != nil || len(got) != 0 {
		t.Fatalf("sessions after fence: %v %v", got, err)
	}

	if err := l.s.Unfence(ctx, "h1", []string{id}); err != nil {
		t.Fatal(err)
	}
	if err := l.s.Unfence(ctx, "h1", []string{id}); err != nil {
		t.Fatalf("unfence again: %v", err)
	}
	l.mustIO(id, "h1", "read -P 0x33 4k 4k")

	// SetAllowed also ends the sessions of hosts taken off the list.
	sess := l.openSession(id, "h2")
	if !sess.do("write -P 0x44 8k 4k", "wrote 4096/4096", 1, 10*time.Second) {
		t.Fatalf("write: %s", sess.output())
	}
	if err := l.s.SetAllowed(ctx, id, []string{"h1"}); err != nil {
		t.Fatal(err)
	}
	if sess.do("write -P 0x55 8k 4k", "wrote 4096/4096", 2, 3*time.Second) {
		t.Fatalf("a host taken off the list still writes: %s", sess.output())
	}
	l.mustIO(id, "h1", "read -P 0x44 8k 4k")
}

func TestSANRebuildAfterKill(t *testing.T) {
	l := newLab(t)
	ctx := context.Background()
	for _, id := range []string{"aa", "bb"} {
		if err := l.s.Create(ctx, pool.Volume{ID: id, SizeBytes: 8 * mib}); err != nil {
			t.Fatal(err)
		}
	}
	access := map[string][]string{"aa": {"h1"}, "bb": {"h2"}, "cc": {"h1"}}
	if err := l.s.Rebuild(ctx, access); err != nil {
		t.Fatal(err)
	}
	l.mustIO("aa", "h1", "write -P 0xa1 0 64k")
	l.mustIO("bb", "h2", "write -P 0xb2 0 64k")

	// kill -9 of tgtd (as of a storage server killed with it), with a
	// half-made volume file left behind.
	old := l.d
	if err := syscall.Kill(old.Pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-old.Done()
	half := filepath.Join(l.dir, ".vol-cc.img.tmp")
	if err := os.WriteFile(half, []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	l.start()
	if names := l.targetNames(); len(names) != 0 {
		t.Fatalf("a fresh tgtd has targets: %v", names)
	}
	if err := l.s.Rebuild(ctx, access); err != nil {
		t.Fatal(err)
	}
	if err := l.s.Rebuild(ctx, access); err != nil {
		t.Fatalf("rebuild again: %v", err)
	}
	if _, err := os.Stat(half); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("half-made file after rebuild: %v", err)
	}
	if names := l.targetNames(); len(names) != 2 {
		t.Fatalf("targets after rebuild: %v", names)
	}
	l.mustIO("aa", "h1", "read -P 0xa1 0 64k")
	l.mustIO("bb", "h2", "read -P 0xb2 0 64k")
	if out, err := l.qemuIO("aa", "h2", testSecret, "read 0 4k"); err == nil {
		t.Fatalf("the access list was not rebuilt: h2 reads aa: %s", out)
	}
	if out, err := l.qemuIO("aa", "h1", "a-wrong-secret-1", "read 0 4k"); err == nil {
		t.Fatalf("CHAP was not rebuilt: %s", out)
	}

	// A target whose file is gone is removed by the next rebuild.
	if err := os.Remove(filepath.Join(l.dir, "vol-bb.img")); err != nil {
		t.Fatal(err)
	}
	if err := l.s.Rebuild(ctx, access); err != nil {
		t.Fatal(err)
	}
	if names := l.targetNames(); len(names) != 1 || names[0] != TargetName("aa") {
		t.Fatalf("targets after the file went: %v", names)
	}
}

func TestDaemonsSideBySide(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t)
	ctx := context.Background()
	start := func(run, listen string, port int) (*Daemon, error) {
		return StartDaemon(ctx, DaemonConfig{Listen: listen, RunDir: run, ControlPort: port,
			Wrap: []string{"ip", "netns", "exec", ns}, Log: testLog(t)})
	}
	run := t.TempDir()
	a, err := start(run, "127.0.0.1:3260", 0)
	if err != nil {
		t.Fatal(err)
	}
	b, err := start(run, "127.0.0.1:3261", 1)
	if err != nil {
		t.Fatal(err)
	}
	// A third on a taken portal is refused, not left on tgtd's fallback.
	if c, err := start(t.TempDir(), "127.0.0.1:3261", 0); err == nil {
		_ = c.Stop(ctx)
		t.Fatal("a tgtd started on a portal already taken")
	} else {
		t.Logf("refused as it should be: %v", err)
	}
	// The same socket twice is refused too.
	if c, err := start(run, "127.0.0.1:3262", 1); err == nil {
		_ = c.Stop(ctx)
		t.Fatal("a second tgtd started on a socket in use")
	}
	for _, d := range []*Daemon{a, b} {
		if err := d.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Kill(d.Pid(), 0); err == nil {
			t.Fatalf("tgtd %d still runs after Stop", d.Pid())
		}
	}
}

func TestSANCreateFromImage(t *testing.T) {
	l := newLab(t)
	ctx := context.Background()
	base := filepath.Join(t.TempDir(), "base.qcow2")
	for _, args := range [][]string{
		{"qemu-img", "create", "-q", "-f", "qcow2", base, "4M"},
		{"qemu-io", "-f", "qcow2", "-c", "write -P 0x7e 64k 64k", base},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	if err := l.s.Create(ctx, pool.Volume{ID: "1a", SizeBytes: 2 * mib, Base: base}); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("a volume smaller than its image: %v", err)
	}
	if ents, _ := os.ReadDir(l.dir); len(ents) != 0 {
		t.Fatalf("a refused volume left files: %v", ents)
	}
	if err := l.s.Create(ctx, pool.Volume{ID: "1a", SizeBytes: 16 * mib, Base: base}); err != nil {
		t.Fatal(err)
	}
	if err := l.s.SetAllowed(ctx, "1a", []string{"h1"}); err != nil {
		t.Fatal(err)
	}
	l.mustIO("1a", "h1", "read -P 0 0 64k", "read -P 0x7e 64k 64k", "read -P 0 128k 15M")
	if got := l.size("1a", "h1"); !strings.HasPrefix(got, "16 MiB") {
		t.Fatalf("size: %s", got)
	}
}

// childEnv makes the test binary a storage server that starts tgtd in
// the namespace it names, prints tgtd's pid and waits to be killed.
const childEnv = "SHOAL_SAN_TEST_CHILD"

func TestDaemonDiesWithItsParent(t *testing.T) {
	if ns := os.Getenv(childEnv); ns != "" {
		d, err := StartDaemon(context.Background(), DaemonConfig{Listen: "127.0.0.1:3260", RunDir: os.Getenv(childEnv + "_RUN"),
			Wrap: []string{"ip", "netns", "exec", ns}, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Println(d.Pid())
		select {}
	}
	requireRoot(t)
	ns, run := newNetns(t), t.TempDir()
	child := exec.Command(os.Args[0], "-test.run=^TestDaemonDiesWithItsParent$")
	child.Env = append(os.Environ(), childEnv+"="+ns, childEnv+"_RUN="+run)
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = child.Process.Kill(); _ = child.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("child: %v: %q", err, line)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatalf("child: %q", line)
	}
	_ = child.Process.Kill() // kill -9 of the storage server
	_ = child.Wait()
	for i := 0; ; i++ {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil || strings.Contains(string(stat), ") Z ") {
			break // gone, or a zombie waiting for init
		}
		if i == 100 {
			t.Fatalf("tgtd %d outlived its storage server: %s", pid, stat)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Its socket, lock and portal are free again for the next start.
	d, err := StartDaemon(context.Background(), DaemonConfig{Listen: "127.0.0.1:3260", RunDir: run,
		Wrap: []string{"ip", "netns", "exec", ns}, Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
}
