package node

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/pool"
	"github.com/shoalvm/shoal/internal/san"
)

// staticPools is a control plane that defines the pools it holds.
type staticPools []api.PoolConfig

func (p staticPools) Pools(context.Context) ([]api.PoolConfig, error) { return p, nil }

const (
	testCHAPUser   = "shoal"
	testCHAPSecret = "s3cret-s3cret-42"
)

// sanRig is a storage server's SAN run by a test: tgtd in a namespace of
// its own on 127.0.0.1:3260.
type sanRig struct {
	t          *testing.T
	ns, dir    string
	run, chaps string
}

func newSANRig(t *testing.T) *sanRig {
	t.Helper()
	why := ""
	if os.Geteuid() != 0 {
		why = "needs root (network namespaces, tgtd)"
	}
	for _, bin := range []string{"ip", "tgtd", "qemu-io"} {
		if _, err := exec.LookPath(bin); err != nil && why == "" {
			why = "needs " + bin + " (make deps)"
		}
	}
	if why != "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s; under CI this test must run", why)
		}
		t.Skip(why)
	}
	r := &sanRig{t: t, ns: fmt.Sprintf("shoal-srv-%d", os.Getpid()), dir: t.TempDir(), run: t.TempDir(), chaps: t.TempDir()}
	if out, err := exec.Command("ip", "netns", "add", r.ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", r.ns).Run() })
	if out, err := exec.Command("ip", "-n", r.ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v: %s", err, out)
	}
	return r
}

// start runs a storage server's SAN until the test ends or stop.
func (r *sanRig) start() (*sanServer, func()) {
	r.t.Helper()
	log := slog.New(slog.NewTextHandler(testWriter{r.t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	pools := staticPools{{Name: "san", Type: api.PoolISCSI, Server: "nas", CHAPUser: testCHAPUser, CHAPSecret: testCHAPSecret}}
	s := newSANServer("nas", r.dir, pools, log, san.DaemonConfig{Listen: "127.0.0.1:3260", RunDir: r.run,
		Wrap: []string{"ip", "netns", "exec", r.ns}, Log: log})
	ctx, cancel := context.WithCancel(context.Background())
	if err := s.startDaemon(ctx); err != nil {
		r.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); s.run(ctx) }()
	stop := func() { cancel(); <-done }
	r.t.Cleanup(stop)
	return s, stop
}

// opens tries to read volume id's LUN as host's initiator.
func (r *sanRig) opens(id, host string) bool {
	f := filepath.Join(r.chaps, "chap")
	if err := os.WriteFile(f, []byte(testCHAPSecret), 0o600); err != nil {
		r.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", r.ns, "qemu-io", "--object", "secret,id=chap,file="+f, "--image-opts",
		"driver=iscsi,transport=tcp,portal=127.0.0.1:3260,target="+san.TargetName(id)+",lun=1,user="+testCHAPUser+
			",password-secret=chap,initiator-name="+san.InitiatorName(host), "-c", "read 0 4k").CombinedOutput()
	return err == nil && strings.Contains(string(out), "read 4096/4096")
}

// waitAccess waits until exactly the hosts of allowed (of all) open id.
func (r *sanRig) waitAccess(id string, all []string, allowed ...string) {
	r.t.Helper()
	var got []string
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		got = nil
		for _, h := range all {
			if r.opens(id, h) {
				got = append(got, h)
			}
		}
		if fmt.Sprint(got) == fmt.Sprint(allowed) {
			return
		}
	}
	r.t.Fatalf("hosts that open volume %s: %v, want %v", id, got, allowed)
}

// TestSANServerAccessLists: a storage server serves the pool naming it
// once it has the volume records, makes volumes on it, applies each
// record's access list to its target whenever it changes, keeps them
// when tgtd dies and, started afresh, rebuilds them from the records.
func TestSANServerAccessLists(t *testing.T) {
	r := newSANRig(t)
	ctx := context.Background()
	s, stop := r.start()
	s.wait = time.Second
	if _, ok, err := s.Driver(ctx, "other"); !ok || err == nil {
		t.Fatalf("before the records came, a job was not told the SAN is not ready: %v %v", ok, err)
	}
	s.Volumes(ctx, nil, true)
	d, ok, err := s.Driver(ctx, "san")
	if !ok || err != nil {
		t.Fatalf("driver of san: %v %v", ok, err)
	}
	if _, ok, err := s.Driver(ctx, "other"); !ok || !api.IsNotFound(err) {
		t.Errorf("a storage server served another pool: %v %v", ok, err)
	}
	if err := d.Create(ctx, pool.Volume{ID: "ac1", SizeBytes: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	all := []string{"h1", "h2", "h3"}
	vol := func(access ...string) api.Volume {
		return api.Volume{Name: "v", ID: "ac1", Pool: "san", State: api.VolumeReady, Host: "nas", Access: access}
	}
	s.Volumes(ctx, []api.Volume{vol()}, false)
	r.waitAccess("ac1", all)
	s.Volumes(ctx, []api.Volume{vol("h1")}, false)
	r.waitAccess("ac1", all, "h1")
	s.Volumes(ctx, []api.Volume{vol("h2")}, false) // attached elsewhere
	r.waitAccess("ac1", all, "h2")
	if sp := s.Spaces(ctx); len(sp) != 1 || sp[0].Name != "san" || !sp[0].Manages || !sp[0].Shared || sp[0].Type != api.PoolISCSI || sp[0].UsedBytes < 1<<20 {
		t.Errorf("spaces: %+v", sp)
	}

	s.mu.Lock()
	pid := s.d.Pid()
	s.mu.Unlock()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	r.waitAccess("ac1", all, "h2")

	// Started afresh: nothing is served until the records come, then
	// their lists are the targets'.
	stop()
	s, _ = r.start()
	s.Volumes(ctx, []api.Volume{vol("h1", "h3")}, true)
	r.waitAccess("ac1", all, "h1", "h3")
	s.Volumes(ctx, []api.Volume{{Name: "v", ID: "ac1", Pool: "san", State: api.VolumeDeleting, Host: "nas", Access: []string{"h1"}}}, false)
	d, _, _ = s.Driver(ctx, "san")
	if err := d.Delete(ctx, "ac1"); err != nil {
		t.Fatal(err)
	}
	r.waitAccess("ac1", all)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
