package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/pool/rbd/cephtest"
	"github.com/shoalvm/shoal/internal/qemu"
)

// TestIntegrationRBDVolumes: a node beside a real Ceph cluster (one
// monitor, manager and OSD, started for the test) uses it as pool
// 'ceph': the pool shows with the cluster's space, a volume is an RBD
// image that a running VM's guest sees, writes and reads, grows only
// while detached, and goes with its image.
func TestIntegrationRBDVolumes(t *testing.T) {
	requireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := cephtest.Start(ctx, cephtest.Options{Addr: "10.78.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Stop(context.Background()) })
	ns, err := c.AddHost(ctx, "n1", "10.78.0.2")
	if err != nil {
		t.Fatal(err)
	}
	l := newLabIn(t, ns)
	l.start()
	l.mustShoal("vm", "create", "a", "--image", "tiny", "--start")
	// A wrong key, a monitor that does not answer: one line each, no pool.
	bad := filepath.Join(l.dir, "bad.keyring")
	must(t, os.WriteFile(bad, []byte("[client.shoal]\n\tkey = AQBbad0AAAAAABAAuqa1fSq6ITbsB0L7mzj2Ag==\n"), 0o600))
	for _, args := range [][]string{
		{"--monitors", strings.Join(c.Monitors, ","), "--keyring", bad},
		{"--monitors", "10.78.0.99:3300", "--keyring", c.UserKeyring},
	} {
		args = append([]string{"pool", "create", "ceph", "--type", "rbd", "--rbd-pool", c.Pool, "--user", c.User}, args...)
		_, errOut, err := l.shoal(args...)
		if msg := strings.TrimSpace(errOut); err == nil || strings.Count(msg, "\n") != 0 || !strings.Contains(msg, `pool "ceph": the Ceph cluster at`) {
			t.Errorf("%v: %v %q", args, err, msg)
		}
	}
	if out := l.mustShoal("pool", "list"); strings.Contains(out, "ceph") {
		t.Fatalf("a refused pool is listed: %q", out)
	}
	l.mustShoal("pool", "create", "ceph", "--type", "rbd", "--monitors", strings.Join(c.Monitors, ","),
		"--rbd-pool", c.Pool, "--user", c.User, "--keyring", c.UserKeyring)
	var pool api.Pool
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		if out, _, err := l.shoal("pool", "show", "ceph", "-o", "json"); err == nil && strings.Contains(out, `"free"`) {
			pool = api.Pool{}
			if jerr := jsonUnmarshal(out, &pool); jerr == nil && pool.FreeBytes > 0 && len(pool.Hosts) == 1 {
				break
			}
		}
	}
	if pool.Type != api.PoolRBD || pool.FreeBytes <= 0 || len(pool.Hosts) != 1 {
		t.Fatalf("pool ceph as the node sees it: %+v", pool)
	}
	out, errOut, err := l.shoal("volume", "create", "huge", "--size", "100T", "--pool", "ceph")
	if err == nil || !strings.Contains(errOut, `pool "ceph" has `) {
		t.Errorf("a volume past the cluster's space: %q %q %v", out, errOut, err)
	}
	if out := l.mustShoal("volume", "create", "cv", "--size", "64M", "--pool", "ceph"); !strings.Contains(out, "volume cv created: 64M in pool ceph") {
		t.Fatalf("volume create: %q", out)
	}
	var id string
	for _, v := range l.volumes() {
		if v.Name == "cv" {
			id = v.ID
		}
	}
	if img, err := rbdLs(ctx, c); err != nil || !strings.Contains(string(img), "vol-"+id) {
		t.Fatalf("rbd ls: %q, %v", img, err)
	}
	a := l.vm("a")
	l.waitServing(a.IP, 90*time.Second)
	l.mustShoal("vm", "attach", "a", "cv")
	serial := qemu.VolumeSerial(id)
	l.waitDisks(a.IP, func(s string) bool { return strings.Contains(s, serial+" 67108864") })
	if out, err := l.fetch(a.IP, "/vol?serial="+serial+"&write=on-ceph"); err != nil || !strings.Contains(out, "ok") {
		t.Fatalf("write: %q, %v", out, err)
	}
	if out, err := l.fetch(a.IP, "/vol?serial="+serial); err != nil || !strings.Contains(out, "on-ceph") {
		t.Fatalf("read: %q, %v", out, err)
	}
	l.mustShoal("vm", "detach", "a", "cv")
	l.waitDisks(a.IP, func(s string) bool { return !strings.Contains(s, serial) })
	if out := l.mustShoal("volume", "resize", "cv", "--size", "128M"); !strings.Contains(out, "volume cv is 128M") {
		t.Errorf("resize: %q", out)
	}
	l.mustShoal("volume", "delete", "cv")

	// A VM whose first disk is on the pool: an image of its own, made
	// from the VM's image; it serves, restarts, and goes with its image.
	l.mustShoal("vm", "create", "onceph", "--image", "tiny", "--pool", "ceph", "--start")
	v := l.vm("onceph")
	first := l.waitServing(v.IP, 90*time.Second)
	if len(v.Disks) != 1 || v.Disks[0].Pool != "ceph" {
		t.Errorf("disks of a VM on ceph: %+v", v.Disks)
	}
	var boot string
	for _, vol := range l.volumes() {
		if vol.VM == "onceph" {
			boot = vol.ID
		}
	}
	if img, err := rbdLs(ctx, c); boot == "" || err != nil || !strings.Contains(string(img), "vol-"+boot) {
		t.Fatalf("the VM's boot image %q: %q, %v", boot, img, err)
	}
	l.mustShoal("vm", "restart", "onceph")
	if again := l.waitServing(v.IP, 90*time.Second); again.Boot == first.Boot || again.Disk <= first.Disk {
		t.Errorf("after a restart: %+v, before %+v (the disk's counter must go on)", again, first)
	}
	l.mustShoal("vm", "delete", "onceph", "--force")
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(300 * time.Millisecond) {
		img, err := rbdLs(ctx, c)
		if err == nil && !strings.Contains(string(img), "vol-"+boot) && len(l.volumes()) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the deleted VM's boot image stays: %q, %v; volumes %+v", img, err, l.volumes())
		}
	}
	if img, err := rbdLs(ctx, c); err != nil || strings.Contains(string(img), "vol-"+id) {
		t.Errorf("rbd ls after delete: %q, %v", img, err)
	}
}

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }

// rbdLs lists the images of the cluster's pool, as its admin.
func rbdLs(ctx context.Context, c *cephtest.Cluster) ([]byte, error) {
	return c.Command(ctx, "rbd", "-c", c.Conf, "-n", "client.admin", "--keyring", c.AdminKeyring, "ls", c.Pool).Output()
}
