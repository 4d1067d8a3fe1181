package main

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/qemu"
)

// TestIntegrationSANVolumes: with a storage server beside a node, a VM
// whose first disk is on pool san (a LUN made from the image on the
// SAN) serves and keeps its disk's counter across a restart, and a
// volume of san attached to it hot is seen by the guest, written, read
// and detached.
func TestIntegrationSANVolumes(t *testing.T) {
	l := newLab(t)
	l.start()
	token := strings.TrimSpace(l.mustShoal("cluster", "token"))
	l.startStorage(filepath.Join(l.dir, "storage"), "--join", "https://127.0.0.1:7443", "--token", token, "--name", "nas",
		"--dir", filepath.Join(l.dir, "san"), "--listen", "127.0.0.1:3260")
	l.mustShoal("pool", "create", "san", "--type", "iscsi", "--server", "nas")
	l.pool("san", "nas")
	// The node reaches the portal: it lists san among its pools.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(300 * time.Millisecond) {
		if p := l.pool("san", "nas"); len(p.Hosts) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the node never reached pool san: %+v", l.pool("san", "nas"))
		}
	}

	l.mustShoal("vm", "create", "onsan", "--image", "tiny", "--pool", "san", "--start")
	v := l.vm("onsan")
	first := l.waitServing(v.IP, 120*time.Second)
	l.mustShoal("volume", "create", "sv", "--size", "64M", "--pool", "san")
	l.mustShoal("vm", "attach", "onsan", "sv")
	var id string
	for _, vol := range l.volumes() {
		if vol.Name == "sv" {
			id = vol.ID
			if len(vol.Access) != 1 || vol.Access[0] != v.Host {
				t.Errorf("the volume's access list: %v, want [%s]", vol.Access, v.Host)
			}
		}
	}
	serial := qemu.VolumeSerial(id)
	l.waitDisks(v.IP, func(s string) bool { return strings.Contains(s, serial+" 67108864") })
	if out, err := l.fetch(v.IP, "/vol?serial="+serial+"&write=on-the-san"); err != nil || !strings.Contains(out, "ok") {
		t.Fatalf("write: %q, %v", out, err)
	}
	if out, err := l.fetch(v.IP, "/vol?serial="+serial); err != nil || !strings.Contains(out, "on-the-san") {
		t.Fatalf("read: %q, %v", out, err)
	}
	l.mustShoal("vm", "detach", "onsan", "sv")
	l.waitDisks(v.IP, func(s string) bool { return !strings.Contains(s, serial) })
	l.mustShoal("vm", "restart", "onsan")
	if again := l.waitServing(v.IP, 120*time.Second); again.Boot == first.Boot || again.Disk <= first.Disk {
		t.Errorf("after a restart: %+v, before %+v (the disk's counter must go on)", again, first)
	}
	l.mustShoal("volume", "delete", "sv")
	l.mustShoal("vm", "delete", "onsan", "--force")
}
