package main

import (
	"encoding/json"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
)

// TestIntegrationCrashRestart: a VM whose QEMU is killed, or whose guest
// kernel panics, is restarted in place with backoff; the 4th crash within
// 10 minutes marks it failed with the reason, which a restart of the
// agent does not forget; 'vm start' clears that; a guest that powers
// itself off stays off.
func TestIntegrationCrashRestart(t *testing.T) {
	l := newLab(t)
	l.start()
	l.mustShoal("vm", "create", "c1", "--image", "tiny", "--start")
	vm := l.vm("c1")
	l.waitServing(vm.IP, 90*time.Second)

	// Crash 1: SIGKILL. Back within 1s plus a launch, with a new QEMU.
	vm, seen := l.waitRestarted("c1", l.killQEMU("c1"), 15*time.Second)
	wantSeen(t, seen, "QEMU was killed", "restarting in 1s (restart 1 of 3 allowed in 10m)")
	if vm.Error != "" {
		t.Errorf("running again, but with error %q", vm.Error)
	}

	// Crash 2: the guest kernel panics; pvpanic tells QEMU, which exits.
	l.waitServing(vm.IP, 90*time.Second)
	if _, _, err := l.shoalStdin("echo c > /proc/sysrq-trigger\n", "vm", "console", "c1"); err != nil {
		t.Logf("console: %v", err) // the console may end with the VM
	}
	vm, seen = l.waitRestarted("c1", vm.PID, 30*time.Second)
	wantSeen(t, seen, "the guest kernel panicked", "restarting in 2s (restart 2 of 3 allowed in 10m)")

	// Crash 3, then 4: given up.
	vm, seen = l.waitRestarted("c1", l.killQEMU("c1"), 20*time.Second)
	wantSeen(t, seen, "restarting in 4s (restart 3 of 3 allowed in 10m)")
	l.killQEMU("c1")
	vm = l.waitState("c1", api.StateFailed, 10*time.Second)
	for _, want := range []string{"crashed 4 times in 10m", "the last time: QEMU was killed", "shoal vm start c1"} {
		if !strings.Contains(vm.Error, want) {
			t.Errorf("failed VM's error %q lacks %q", vm.Error, want)
		}
	}
	time.Sleep(2 * time.Second)
	if v := l.vm("c1"); v.State != api.StateFailed || v.PID != 0 || len(l.qemuPids()) != 0 {
		t.Fatalf("a given-up VM runs again: %+v, qemu %v", v, l.qemuPids())
	}
	// Nor after a restart of the node: the agent kept the history.
	l.kill()
	l.start()
	time.Sleep(3 * time.Second)
	if v := l.vm("c1"); v.State != api.StateFailed || !strings.Contains(v.Error, "crashed 4 times") || len(l.qemuPids()) != 0 {
		t.Fatalf("a given-up VM after the agent's restart: %+v, qemu %v", v, l.qemuPids())
	}
	// shoal events tells each crash and what was done about it.
	var evs []api.Event
	if err := json.Unmarshal([]byte(l.mustShoal("events", "--vm", "c1", "-o", "json")), &evs); err != nil {
		t.Fatal(err)
	}
	var crashes []string
	for _, e := range evs {
		if e.Kind == api.EventVMCrashed {
			crashes = append(crashes, e.Severity+": "+e.Message)
		}
	}
	if len(crashes) != 4 || !strings.Contains(crashes[1], "the guest kernel panicked") || !strings.Contains(crashes[1], "restarting it in place in 2s") ||
		!strings.HasPrefix(crashes[3], api.SeverityError+": ") || !strings.Contains(crashes[3], "not restarting it: 4 crashes in 10m") {
		t.Errorf("crash events:\n%s", strings.Join(crashes, "\n"))
	}

	// The user starts it again: a fresh history.
	l.mustShoal("vm", "start", "c1")
	if vm = l.vm("c1"); vm.State != api.StateRunning || vm.PID == 0 || vm.Error != "" {
		t.Fatalf("after start: %+v", vm)
	}
	vm, seen = l.waitRestarted("c1", l.killQEMU("c1"), 15*time.Second)
	wantSeen(t, seen, "restart 1 of 3 allowed")

	// A guest that powers itself off is stopped, not restarted.
	l.waitServing(vm.IP, 90*time.Second)
	if _, _, err := l.shoalStdin("poweroff\n", "vm", "console", "c1"); err != nil {
		t.Logf("console: %v", err)
	}
	if vm = l.waitState("c1", api.StateStopped, 30*time.Second); vm.Power != api.PowerStopped {
		t.Errorf("after the guest's poweroff: %+v", vm)
	}
	time.Sleep(2 * time.Second)
	if v := l.vm("c1"); v.State != api.StateStopped || len(l.qemuPids()) != 0 {
		t.Fatalf("a powered-off VM runs again: %+v, qemu %v", v, l.qemuPids())
	}
	l.mustShoal("vm", "delete", "c1")
}

// killQEMU kills the VM's QEMU with SIGKILL, by the pid 'vm show' reports,
// and returns that pid.
func (l *testNode) killQEMU(name string) int {
	l.t.Helper()
	vm := l.waitState(name, api.StateRunning, 30*time.Second)
	if vm.PID == 0 || !slices.Contains(l.qemuPids(), vm.PID) {
		l.t.Fatalf("%s: pid %d is not one of the lab's QEMUs %v", name, vm.PID, l.qemuPids())
	}
	if err := syscall.Kill(vm.PID, syscall.SIGKILL); err != nil {
		l.t.Fatal(err)
	}
	return vm.PID
}

// waitRestarted waits until the VM runs again under a QEMU other than
// old, and returns it with the errors it showed meanwhile.
func (l *testNode) waitRestarted(name string, old int, d time.Duration) (api.VM, []string) {
	l.t.Helper()
	var seen []string
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		vm := l.vm(name)
		if vm.Error != "" && !slices.Contains(seen, vm.Error) {
			seen = append(seen, vm.Error)
		}
		if vm.State == api.StateRunning && vm.PID != 0 && vm.PID != old {
			return vm, seen
		}
		if vm.State == api.StateFailed {
			l.t.Fatalf("%s failed instead of restarting: %s", name, vm.Error)
		}
		time.Sleep(50 * time.Millisecond)
	}
	l.t.Fatalf("%s not running again with a new QEMU within %s (old pid %d); errors seen: %q", name, d, old, seen)
	return api.VM{}, nil
}

// waitState waits until the VM is in state.
func (l *testNode) waitState(name, state string, d time.Duration) api.VM {
	l.t.Helper()
	deadline := time.Now().Add(d)
	var vm api.VM
	for time.Now().Before(deadline) {
		if vm = l.vm(name); vm.State == state {
			return vm
		}
		time.Sleep(50 * time.Millisecond)
	}
	l.t.Fatalf("%s not %s within %s: %+v", name, state, d, vm)
	return vm
}

// wantSeen checks that some error seen contains each of wants.
func wantSeen(t *testing.T, seen []string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !slices.ContainsFunc(seen, func(s string) bool { return strings.Contains(s, w) }) {
			t.Errorf("no error seen with %q; seen: %q", w, seen)
		}
	}
}
