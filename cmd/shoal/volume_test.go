package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoalvm/shoal/internal/api"
)

// TestIntegrationVolumes runs the volume and pool verbs on one node as a
// user would: a blank volume and one from an image are made in the
// host's pool (the only one, so neither --pool nor --host is needed),
// show in 'volume list' and 'pool list', grow, and go with their files;
// bad input (too big for the pool, a taken name, a shrink, past the
// project's max-disk, a viewer) is one line and changes nothing.
func TestIntegrationVolumes(t *testing.T) {
	l := newLab(t)
	l.start()
	poolDir := filepath.Join(l.dir, "data", "pools", "local")

	if out := l.mustShoal("volume", "create", "data", "--size", "64M"); !strings.Contains(out, "volume data created: 64M in pool local") {
		t.Fatalf("volume create: %q", out)
	}
	var img api.Volume
	must(t, json.Unmarshal([]byte(l.mustShoal("volume", "create", "fromimg", "--from-image", "tiny", "-o", "json")), &img))
	if img.State != api.VolumeReady || img.SizeBytes <= 0 || img.Image != "tiny" {
		t.Fatalf("volume from an image: %+v", img)
	}
	fail := func(want string, args ...string) {
		t.Helper()
		out, errOut, err := l.shoal(args...)
		msg := strings.TrimSpace(errOut)
		if err == nil || strings.Count(msg, "\n") != 0 || !strings.Contains(msg, want) {
			t.Errorf("%v: exit %v, stdout %q, stderr %q; want one line with %q", args, err, out, msg, want)
		}
	}
	fail(`pool "local" has `, "volume", "create", "huge", "--size", "100T")
	fail(`volume "data" already exists`, "volume", "create", "data", "--size", "1G")
	fail(`pool "nope" not found`, "volume", "create", "x", "--size", "1G", "--pool", "nope")
	fail("a volume only grows", "volume", "resize", "data", "--size", "32M")
	fail(`volume "ghost" not found`, "volume", "show", "ghost")
	l.mustShoal("project", "create", "small", "--max-disk", "100M")
	fail(`project "small" is at its quota: max-disk 100M`, "volume", "create", "q", "--size", "200M", "--project", "small")
	l.mustShoal("user", "create", "bob", "--role", "viewer")
	bob := strings.TrimSpace(l.mustShoal("token", "create", "--user", "bob"))
	fail("may not create volumes: it needs the operator role", "--token", bob, "volume", "create", "b", "--size", "1M")
	if out := l.mustShoal("--token", bob, "volume", "list"); !strings.Contains(out, "data") {
		t.Errorf("a viewer's volume list: %q", out)
	}

	if out := l.mustShoal("volume", "resize", "data", "--size", "128M"); !strings.Contains(out, "volume data is 128M") {
		t.Errorf("resize: %q", out)
	}
	var vols []api.Volume
	must(t, json.Unmarshal([]byte(l.mustShoal("volume", "list", "-o", "json")), &vols))
	if len(vols) != 2 || vols[0].Name != "data" || vols[0].SizeBytes != 128<<20 || vols[0].State != api.VolumeReady || vols[0].Pool != "local" {
		t.Fatalf("volume list: %+v", vols)
	}
	file := filepath.Join(poolDir, "vol-"+vols[0].ID+".qcow2")
	if _, err := os.Stat(file); err != nil {
		t.Fatalf("the volume's file: %v", err)
	}
	var pools []api.Pool
	must(t, json.Unmarshal([]byte(l.mustShoal("pool", "list", "-o", "json")), &pools))
	if len(pools) != 1 || pools[0].Name != "local" || pools[0].Type != "dir" || pools[0].Volumes != 2 || len(pools[0].Hosts) != 1 ||
		pools[0].FreeBytes <= 0 || pools[0].SizeBytes < pools[0].FreeBytes {
		t.Fatalf("pool list: %+v", pools)
	}

	// Attached to a stopped VM: in its spec, opened at its next start.
	l.mustShoal("vm", "create", "idle", "--image", "tiny")
	l.mustShoal("vm", "create", "other", "--image", "tiny")
	if out := l.mustShoal("vm", "attach", "idle", "data"); !strings.Contains(out, "volume data attached to vm idle (it opens it at its next start)") {
		t.Errorf("attach: %q", out)
	}
	if show := l.mustShoal("vm", "show", "idle"); !strings.Contains(show, "data  128M on pool local (volume)") || !strings.Contains(show, "disk0  ") {
		t.Errorf("vm show: %q", show)
	}
	fail("volume \"data\" is attached to vm idle: detach it first", "vm", "attach", "other", "data")
	fail("volume \"data\" is attached to vm idle: detach it first ('shoal vm detach idle data')", "volume", "delete", "data")
	fail(`volume "fromimg" is not attached to vm "idle"`, "vm", "detach", "idle", "fromimg")
	fail("may not attach volumes: it needs the operator role", "--token", bob, "vm", "attach", "other", "fromimg")
	l.mustShoal("volume", "create", "dev1", "--size", "1M", "--project", "small")
	fail("a volume is attached within its project", "vm", "attach", "other", "dev1")
	if out := l.mustShoal("vm", "detach", "idle", "data"); !strings.Contains(out, "volume data detached from vm idle") {
		t.Errorf("detach: %q", out)
	}
	if v := l.vm("idle"); len(v.Disks) != 1 {
		t.Errorf("disks after detach: %+v", v.Disks)
	}
	l.mustShoal("vm", "attach", "other", "data") // free again
	l.mustShoal("vm", "delete", "other")
	l.mustShoal("volume", "delete", "data") // a deleted VM's volumes are free

	// Pools the cluster defines: bad input, then an adopted target.
	fail(`storage server "nas" not found`, "pool", "create", "san", "--type", "iscsi", "--server", "nas")
	fail("either Shoal's storage server's (--server NAME) or an existing target", "pool", "create", "san", "--type", "iscsi")
	fail(`portal "nowhere": want IP:PORT`, "pool", "create", "ext", "--type", "iscsi", "--portal", "nowhere", "--target", "iqn.2003-01.org.example:d")
	fail("CHAP needs both a user and a secret", "pool", "create", "ext", "--type", "iscsi", "--portal", "127.0.0.1:3260", "--target", "iqn.2003-01.org.example:d", "--chap-user", "u")
	fail("an rbd pool needs the Ceph pool of its images", "pool", "create", "ceph", "--type", "rbd", "--monitors", "127.0.0.1:6789")
	fail(`pool type "nfs": use iscsi or rbd`, "pool", "create", "n", "--type", "nfs")
	fail(`pool "local" is a directory pool of host`, "pool", "create", "local", "--type", "iscsi", "--portal", "127.0.0.1:3260", "--target", "iqn.2003-01.org.example:d")
	secret := filepath.Join(l.dir, "chap")
	must(t, os.WriteFile(secret, []byte("s3cret-s3cret-42\n"), 0o600))
	fail("may not manage storage pools: it needs the admin role", "--token", bob, "pool", "create", "ext", "--type", "iscsi",
		"--portal", "127.0.0.1:3260", "--target", "iqn.2003-01.org.example:d")
	var ext api.PoolConfig
	must(t, json.Unmarshal([]byte(l.mustShoal("pool", "create", "ext", "--type", "iscsi", "--portal", "127.0.0.1:3260",
		"--target", "iqn.2003-01.org.example:d", "--chap-user", "u", "--chap-secret-file", secret, "-o", "json")), &ext))
	if ext.Name != "ext" || ext.CHAPUser != "u" || ext.CHAPSecret != "" {
		t.Errorf("pool create answered %+v (never the secret)", ext)
	}
	if out := l.mustShoal("pool", "list"); !strings.Contains(out, "ext") || !strings.Contains(out, "iscsi") {
		t.Errorf("pool list: %q", out)
	}
	l.mustShoal("pool", "delete", "ext")
	l.mustShoal("volume", "delete", "fromimg")
	l.mustShoal("volume", "delete", "dev1")
	if out := l.mustShoal("volume", "list"); strings.Contains(out, "data") {
		t.Errorf("after delete: %q", out)
	}
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Errorf("the deleted volume's file: %v", err)
	}
	p := l.mustShoal("project", "show", "small")
	if !strings.Contains(p, "Disk:") {
		t.Errorf("project show: %q", p)
	}
}
