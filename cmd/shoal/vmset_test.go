package main

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
)

// qemuArg returns the value of flag in the command line of QEMU pid.
func qemuArg(t *testing.T, pid int, flag string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	args := strings.Split(string(bytes.TrimRight(b, "\x00")), "\x00")
	for i, a := range args[:len(args)-1] {
		if a == flag {
			return args[i+1]
		}
	}
	t.Fatalf("QEMU %d has no %s: %q", pid, flag, args)
	return ""
}

// TestIntegrationVMSetSize changes the size of a running VM: the CLI
// says it applies from the next start, the VM goes on serving with the
// same QEMU and size (also once the node restarts and reads the size
// back from QEMU), and after a stop and start its QEMU has the new size.
func TestIntegrationVMSetSize(t *testing.T) {
	l := newLab(t)
	l.start()
	l.mustShoal("vm", "create", "web1", "--image", "tiny", "--memory", "256M", "--start")
	vm := l.vm("web1")
	r1 := l.waitServing(vm.IP, 90*time.Second)
	if vm.RunningCPUs != 1 || vm.RunningMemoryMiB != 256 {
		t.Fatalf("a new VM runs with %d vCPUs, %d MiB; want 1, 256", vm.RunningCPUs, vm.RunningMemoryMiB)
	}

	out := l.mustShoal("vm", "set", "web1", "--cpus", "2", "--memory", "384M")
	if want := "vm web1: 2 vCPUs, 384 MiB from its next start (it is running now with 1 vCPU, 256 MiB)\n"; out != want {
		t.Fatalf("vm set said %q, want %q", out, want)
	}
	_, errOut, err := l.shoal("vm", "set", "web1", "--cpus", "0")
	if err == nil || strings.TrimSpace(errOut) != "error: cpus 0 is out of range: use 1 to 64" {
		t.Errorf("vm set --cpus 0: %v %q", err, errOut)
	}
	check := func(when string, r reply) {
		t.Helper()
		v := l.vm("web1")
		if v.State != api.StateRunning || v.PID != vm.PID || v.CPUs != 2 || v.MemoryMiB != 384 || v.RunningCPUs != 1 || v.RunningMemoryMiB != 256 {
			t.Fatalf("%s: vm show %+v; want the same QEMU (pid %d) running with 1 vCPU, 256 MiB, set to 2, 384", when, v, vm.PID)
		}
		if got, err := l.get(vm.IP); err != nil || got.Boot != r.Boot || got.Count != r.Count+1 {
			t.Fatalf("%s: the guest answered %+v (%v) after %+v: it did not go on", when, got, err, r)
		}
		if s := qemuArg(t, vm.PID, "-smp"); s != "1" {
			t.Fatalf("%s: QEMU runs with -smp %s", when, s)
		}
	}
	time.Sleep(time.Second) // time for the agent to act on the spec, if it wrongly would
	check("after vm set", r1)
	if show := l.mustShoal("vm", "show", "web1"); !strings.Contains(show, "Runs with:") || !strings.Contains(show, "1 vCPU, 256 MiB until its next start") {
		t.Errorf("vm show does not tell the size it runs at:\n%s", show)
	}
	// A node that restarts reads the size back from the running QEMU.
	r2, _ := l.get(vm.IP)
	l.kill()
	l.start()
	check("after the node restarted", r2)

	l.mustShoal("vm", "stop", "web1")
	l.mustShoal("vm", "start", "web1")
	r3 := l.waitServing(vm.IP, 90*time.Second)
	if r3.Boot == r1.Boot {
		t.Fatalf("the guest did not boot again: %+v", r3)
	}
	v := l.vm("web1")
	if v.RunningCPUs != 2 || v.RunningMemoryMiB != 384 || v.PID == vm.PID {
		t.Fatalf("after stop and start: %+v; want a new QEMU running with 2 vCPUs, 384 MiB", v)
	}
	if s, m := qemuArg(t, v.PID, "-smp"), qemuArg(t, v.PID, "-m"); s != "2" || m != strconv.Itoa(384*1024+8)+"K" {
		t.Fatalf("the new QEMU runs with -smp %s -m %s, want 2 and 384 MiB (TCG's pad included)", s, m)
	}
	if out := l.mustShoal("vm", "set", "web1", "--cpus", "2"); out != "vm web1: 2 vCPUs, 384 MiB, as it runs now\n" {
		t.Errorf("vm set to the size it runs at said %q", out)
	}
	l.mustShoal("vm", "delete", "--force", "web1")
}

// TestSizeLine: what 'vm set' says of the size, for each state a VM
// can be in.
func TestSizeLine(t *testing.T) {
	for _, tc := range []struct {
		vm   api.VM
		want string
	}{
		{api.VM{State: api.StateStopped, CPUs: 2, MemoryMiB: 512}, "2 vCPUs, 512 MiB"},
		{api.VM{State: api.StateRunning, CPUs: 2, MemoryMiB: 512, RunningCPUs: 1, RunningMemoryMiB: 256},
			"2 vCPUs, 512 MiB from its next start (it is running now with 1 vCPU, 256 MiB)"},
		{api.VM{State: api.StatePaused, CPUs: 1, MemoryMiB: 128, RunningCPUs: 2, RunningMemoryMiB: 256},
			"1 vCPU, 128 MiB from its next start (it is paused now with 2 vCPUs, 256 MiB)"},
		{api.VM{State: api.StateUnknown, CPUs: 2, MemoryMiB: 512, RunningCPUs: 1, RunningMemoryMiB: 256},
			"2 vCPUs, 512 MiB from its next start (its QEMU was started with 1 vCPU, 256 MiB)"},
		{api.VM{State: api.StateRunning, CPUs: 2, MemoryMiB: 512}, "2 vCPUs, 512 MiB from its next start"},
		{api.VM{State: api.StateRunning, CPUs: 2, MemoryMiB: 512, RunningCPUs: 2, RunningMemoryMiB: 512}, "2 vCPUs, 512 MiB, as it runs now"},
	} {
		if got := sizeLine(tc.vm); got != tc.want {
			t.Errorf("%s VM: %q, want %q", tc.vm.State, got, tc.want)
		}
	}
}
