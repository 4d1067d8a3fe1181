package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
)

// TestIntegrationVMLifecycle walks a VM through everything a user does
// with it on one host.
func TestIntegrationVMLifecycle(t *testing.T) {
	l := newLab(t)
	l.start()

	ud := filepath.Join(l.dir, "user-data")
	if err := os.WriteFile(ud, []byte("#!/bin/sh\necho user-data-ran-$((40+2)) > /dev/console\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := l.mustShoal("vm", "create", "web1", "--image", "tiny", "--memory", "256M", "--disk", "1G", "--start", "--user-data", ud)
	if !strings.Contains(out, "web1") || !strings.Contains(out, "running") {
		t.Fatalf("create output: %q", out)
	}
	vm := l.vm("web1")
	if vm.State != api.StateRunning || vm.IP == "" || vm.Host == "" || vm.DiskBytes != 1<<30 {
		t.Fatalf("vm show: %+v", vm)
	}
	if list := l.mustShoal("vm", "list"); !strings.Contains(list, "web1") || !strings.Contains(list, vm.IP) {
		t.Fatalf("vm list: %q", list)
	}
	r1 := l.waitServing(vm.IP, 60*time.Second)
	r2, err := l.get(vm.IP)
	if err != nil || r2.Boot != r1.Boot || r2.Count != r1.Count+1 || r2.Disk != r1.Disk+1 {
		t.Fatalf("second request: %+v after %+v (%v)", r2, r1, err)
	}
	if logs := l.mustShoal("vm", "logs", "web1"); !strings.Contains(logs, "serving on "+vm.IP) || !strings.Contains(logs, "user-data-ran-42") {
		t.Fatalf("vm logs lack the guest's banner or the user-data's line:\n%s", logs)
	}
	con, _, _ := l.shoalStdin("echo console-$((6*7))\n", "vm", "console", "web1")
	if !strings.Contains(con, "console-42") {
		t.Fatalf("console did not run a command: %q", con)
	}

	// Pause freezes the guest; resume continues the same boot.
	l.mustShoal("vm", "pause", "web1")
	if v := l.vm("web1"); v.State != api.StatePaused {
		t.Fatalf("after pause: %s", v.State)
	}
	if _, err := l.get(vm.IP); err == nil {
		t.Fatal("a paused VM answered HTTP")
	}
	l.mustShoal("vm", "resume", "web1")
	if r, err := l.get(vm.IP); err != nil || r.Boot != r1.Boot {
		t.Fatalf("after resume: %+v %v", r, err)
	}

	// Restart reboots the guest: a new boot id, the disk counter goes on,
	// by one per request since the boot (waitServing may have retried a
	// slow first answer).
	before, _ := l.get(vm.IP)
	l.mustShoal("vm", "restart", "web1")
	after := l.waitServing(vm.IP, 60*time.Second)
	if after.Boot == before.Boot || after.Count < 1 || after.Disk != before.Disk+after.Count {
		t.Fatalf("restart: %+v then %+v", before, after)
	}

	// A graceful stop: the guest shuts down on ACPI, well before the timeout.
	start := time.Now()
	l.mustShoal("vm", "stop", "web1")
	if d := time.Since(start); d > 12*time.Second {
		t.Errorf("ACPI stop took %s: the guest did not power off by itself", d)
	}
	if v := l.vm("web1"); v.State != api.StateStopped {
		t.Fatalf("after stop: %s", v.State)
	}
	if len(l.qemuPids()) != 0 || len(l.taps()) != 0 {
		t.Fatalf("stopped VM left QEMU %v or taps %v", l.qemuPids(), l.taps())
	}
	l.mustShoal("vm", "start", "web1")
	r3 := l.waitServing(vm.IP, 60*time.Second)
	if r3.Disk <= after.Disk {
		t.Fatalf("disk counter went back: %d after %d", r3.Disk, after.Disk)
	}
	l.mustShoal("vm", "stop", "--force", "web1")
	l.mustShoal("vm", "delete", "web1")
	if names := l.vmNames(); len(names) != 0 {
		t.Fatalf("vm list after delete: %v", names)
	}
	if f := l.files(); len(f) != 0 {
		t.Fatalf("delete left files: %v", f)
	}
}

// TestIntegrationAgentRestartKeepsVMs kills the node (server, agent and
// etcd in one process) with three VMs running: they keep serving, and the
// next start finds them again without a reboot.
func TestIntegrationAgentRestartKeepsVMs(t *testing.T) {
	l := newLab(t)
	l.start()
	names := []string{"a1", "a2", "a3"}
	before := map[string]reply{}
	ips := map[string]string{}
	for _, n := range names {
		l.mustShoal("vm", "create", n, "--image", "tiny", "--start")
		ips[n] = l.vm(n).IP
	}
	for _, n := range names {
		before[n] = l.waitServing(ips[n], 90*time.Second)
	}
	pids := l.qemuPids()
	l.kill()
	for _, n := range names {
		r, err := l.get(ips[n])
		if err != nil || r.Boot != before[n].Boot || r.Count != before[n].Count+1 {
			t.Fatalf("%s while the node is down: %+v %v (before %+v)", n, r, err, before[n])
		}
	}
	// The state dir is tied to its host name: a start under another name
	// is refused and touches no VM.
	if out := l.startFails("--host", "renamed"); !strings.Contains(out, `belongs to host`) {
		t.Fatalf("start under another host name: %s", out)
	}
	l.start()
	for _, n := range names {
		if v := l.vm(n); v.State != api.StateRunning {
			t.Fatalf("%s after restart: %s", n, v.State)
		}
		r, err := l.get(ips[n])
		if err != nil || r.Boot != before[n].Boot || r.Count != before[n].Count+2 {
			t.Fatalf("%s after restart: %+v %v (before %+v)", n, r, err, before[n])
		}
	}
	if now := l.qemuPids(); len(now) != len(pids) {
		t.Fatalf("QEMU processes %v, before %v", now, pids)
	}
	// The reattached agent still controls them.
	l.mustShoal("vm", "stop", "--force", "a1")
	for _, n := range names {
		l.mustShoal("vm", "delete", "--force", n)
	}
	if len(l.qemuPids()) != 0 || len(l.files()) != 0 {
		t.Fatalf("left behind: qemu %v files %v", l.qemuPids(), l.files())
	}
}

// TestIntegrationCrashSafety kills the node at points inside create and
// delete; the next start converges with nothing orphaned.
func TestIntegrationCrashSafety(t *testing.T) {
	l := newLab(t)
	for _, point := range []string{"agent-create-after-disk", "agent-start-after-launch"} {
		t.Run(point, func(t *testing.T) {
			l.start("SHOAL_CRASHPOINT=" + point)
			_, _, _ = l.shoal("vm", "create", "c1", "--image", "tiny", "--start")
			l.waitExit(30 * time.Second)
			l.start()
			vm := l.vm("c1")
			l.waitServing(vm.IP, 90*time.Second)
			if got := len(l.qemuPids()); got != 1 {
				t.Fatalf("%d QEMU processes for one VM", got)
			}
			l.mustShoal("vm", "delete", "--force", "c1")
			l.kill()
		})
	}
	for _, point := range []string{"agent-delete-after-kill", "agent-delete-after-files"} {
		t.Run(point, func(t *testing.T) {
			l.start()
			l.mustShoal("vm", "create", "d1", "--image", "tiny", "--start")
			l.kill()
			l.start("SHOAL_CRASHPOINT=" + point)
			_, _, _ = l.shoal("vm", "delete", "--force", "d1")
			l.waitExit(30 * time.Second)
			l.start()
			deadline := time.Now().Add(20 * time.Second)
			for len(l.vmNames()) != 0 && time.Now().Before(deadline) {
				time.Sleep(100 * time.Millisecond)
			}
			if names := l.vmNames(); len(names) != 0 {
				t.Fatalf("record left: %v", names)
			}
			if len(l.qemuPids()) != 0 || len(l.files()) != 0 || len(l.taps()) != 0 {
				t.Fatalf("left behind: qemu %v files %v taps %v", l.qemuPids(), l.files(), l.taps())
			}
			l.kill()
		})
	}
}

// TestIntegrationImageImport converts foreign disk formats into images.
func TestIntegrationImageImport(t *testing.T) {
	l := newLab(t)
	l.start()
	for _, format := range []string{"vmdk", "vdi", "raw"} {
		src := filepath.Join(l.dir, "disk."+format)
		l.run("qemu-img", "create", "-q", "-f", format, src, "32M")
		out := l.mustShoal("image", "import", src, "--name", "from-"+format)
		if !strings.Contains(out, "from-"+format) {
			t.Fatalf("import %s: %q", format, out)
		}
	}
	junk := filepath.Join(l.dir, "junk.txt")
	if err := os.WriteFile(junk, []byte("not a disk"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, errOut, err := l.shoal("image", "import", junk, "--name", "junk"); err == nil || errOut == "" {
		t.Fatal("importing a text file succeeded")
	}
	list := l.mustShoal("image", "list")
	for _, want := range []string{"tiny", "from-vmdk", "from-vdi", "from-raw"} {
		if !strings.Contains(list, want) {
			t.Errorf("image list lacks %s:\n%s", want, list)
		}
	}
	if strings.Contains(list, "junk") {
		t.Errorf("failed import listed:\n%s", list)
	}
	l.mustShoal("image", "delete", "from-raw")
}
