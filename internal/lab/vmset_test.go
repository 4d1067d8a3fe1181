package lab

import (
	"slices"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
)

// argOf is the value of flag in argv ("" if none).
func argOf(argv []string, flag string) string {
	if i := slices.Index(argv, flag); i >= 0 && i+1 < len(argv) {
		return argv[i+1]
	}
	return ""
}

// TestLabMigrateResizedVM: a running VM whose size was changed (for its
// next start) live-migrates with the size it runs at (the target's QEMU
// must match the source's), serving throughout; its next start, on the
// new host, gives it the new size.
func TestLabMigrateResizedVM(t *testing.T) {
	f := startLab(t, 2)
	v := f.createServing("sized", "--pool", "shared", "--host", "host1")
	if out := f.shoal("vm", "set", "sized", "--cpus", "2", "--memory", "192M"); out != "vm sized: 2 vCPUs, 192 MiB from its next start (it is running now with 1 vCPU, 128 MiB)\n" {
		t.Fatalf("vm set said %q", out)
	}
	p, err := StartPoller(f.ctx, "client", v.IP, 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	time.Sleep(500 * time.Millisecond)
	out := f.shoal("vm", "migrate", "sized", "--to", "host2")
	got := f.vm("sized")
	if got.Host != "host2" || got.State != api.StateRunning || got.Migrations[0].Result != api.MigrationCompleted {
		t.Fatalf("after the migration: %s on %s, history %+v (%s)", got.State, got.Host, got.Migrations, out)
	}
	if got.RunningCPUs != 1 || got.RunningMemoryMiB != 128 || got.CPUs != 2 || got.MemoryMiB != 192 {
		t.Errorf("on host2 it runs with %d vCPUs, %d MiB, set to %d, %d; want 1, 128 and 2, 192",
			got.RunningCPUs, got.RunningMemoryMiB, got.CPUs, got.MemoryMiB)
	}
	pids := f.qemuOf(v.ID)["host2"]
	if len(pids) != 1 {
		t.Fatalf("QEMU of the VM on host2: %v", pids)
	}
	if argv := cmdline(pids[0]); argOf(argv, "-smp") != "1" {
		t.Errorf("the target's QEMU runs with -smp %q, want 1", argOf(argv, "-smp"))
	}
	time.Sleep(500 * time.Millisecond)
	r := p.Stop()
	t.Logf("one migration of a resized VM: %s", r)
	if r.Failed > 0 || len(r.Boots) != 1 || r.CountJumps > 0 || r.DiskJumps > 0 {
		t.Errorf("the guest did not go on: %d of %d requests failed, boots %v, %d count jumps, %d disk jumps",
			r.Failed, r.Requests, r.Boots, r.CountJumps, r.DiskJumps)
	}
	f.requireClean(v.ID, "host2")

	f.shoal("vm", "stop", "sized")
	f.shoal("vm", "start", "sized")
	f.waitServing(v.IP, 2*time.Minute)
	got = f.vm("sized")
	if got.Host != "host2" || got.RunningCPUs != 2 || got.RunningMemoryMiB != 192 {
		t.Fatalf("after stop and start: on %s with %d vCPUs, %d MiB; want host2 with 2, 192", got.Host, got.RunningCPUs, got.RunningMemoryMiB)
	}
	if argv := cmdline(f.qemuOf(v.ID)["host2"][0]); argOf(argv, "-smp") != "2" {
		t.Errorf("after its next start QEMU runs with -smp %q, want 2", argOf(argv, "-smp"))
	}
	f.shoal("vm", "delete", "--force", "sized")
}
