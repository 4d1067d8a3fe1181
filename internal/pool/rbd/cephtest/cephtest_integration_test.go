package cephtest

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestClusterStartsAndStopsClean starts a cluster, lets the pool's user
// write an image, and checks that Stop leaves no process, namespace or
// file behind.
func TestClusterStartsAndStopsClean(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root (network namespaces)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := Start(ctx, Options{Log: slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			_ = c.Stop(context.Background())
		}
	}()
	rss, err := c.RSS()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cluster healthy in %v, daemons' RSS %d MiB", c.Started.Round(10*time.Millisecond), rss>>20)
	// The user, not the admin, can make and write an image of the pool.
	user := []string{"-c", c.UserConf, "--id", c.User}
	if out, err := c.Command(ctx, "rbd", append(user, "create", "--size", "16", c.Pool+"/probe")...).CombinedOutput(); err != nil {
		t.Fatalf("rbd create as %s: %v: %s", c.User, err, out)
	}
	if out, err := c.Command(ctx, "rbd", append(user, "bench", "--io-type", "write", "--io-total", "1M", c.Pool+"/probe")...).CombinedOutput(); err != nil {
		t.Fatalf("rbd bench as %s: %v: %s", c.User, err, out)
	}
	// The user cannot act as the admin.
	if out, err := c.Command(ctx, "ceph", append(user, "osd", "pool", "create", "other")...).CombinedOutput(); err == nil {
		t.Fatalf("the pool's user created a pool: %s", out)
	}
	pids, ns, dir := c.Pids(), c.Netns, c.Dir
	if len(pids) != 3 {
		t.Fatalf("daemons %v, want mon, mgr and osd", pids)
	}
	t0 := time.Now()
	if err := c.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	stopped = true
	t.Logf("stopped in %v", time.Since(t0).Round(10*time.Millisecond))
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("daemon %d still there after Stop (%v)", pid, err)
		}
	}
	for _, p := range []string{"/run/netns/" + ns, dir} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s still there after Stop (%v)", p, err)
		}
	}
}

// TestFailedStartLeavesNothing: a start cut short (here by its context)
// removes what it made: no daemon, namespace or directory stays.
func TestFailedStartLeavesNothing(t *testing.T) {
	before := cephNamespaces(t)
	dir := filepath.Join(t.TempDir(), "cluster")
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	c, err := Start(ctx, Options{Dir: dir})
	if err == nil {
		_ = c.Stop(context.Background())
		t.Fatal("the cluster started within 1 s: this test needs a start that is cut short")
	}
	t.Logf("start cut short: %.200s", err)
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s still there (%v)", dir, err)
	}
	if after := cephNamespaces(t); len(after) != len(before) {
		t.Errorf("namespaces before %v, after %v", before, after)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		if b, err := os.ReadFile(p); err == nil && strings.Contains(string(b), dir) {
			t.Errorf("a process of the cluster still runs: %s %q", p, b)
		}
	}
}

// cephNamespaces are the namespaces named like a cluster's.
func cephNamespaces(t *testing.T) []string {
	t.Helper()
	ns, err := filepath.Glob("/run/netns/ceph-*")
	if err != nil {
		t.Fatal(err)
	}
	return ns
}
