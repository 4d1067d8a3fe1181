package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/qemu"
)

// TestIntegrationConsoleLogCapped: a guest that writes megabytes to its
// serial console does not grow console.log past its cap, also after the
// agent was restarted and reattached to the running QEMU; 'vm logs'
// still shows the end of what it wrote.
func TestIntegrationConsoleLogCapped(t *testing.T) {
	l := newLab(t)
	l.start()
	l.mustShoal("vm", "create", "c1", "--image", "tiny", "--start")
	vm := l.vm("c1")
	l.waitServing(vm.IP, 90*time.Second)
	dir := filepath.Join(l.dir, "data", "agent", "vms", vm.ID)

	flood := func(marker string) {
		t.Helper()
		// 1.3 MB (more than the cap), then the marker, all to the serial console.
		cmd := fmt.Sprintf("dd if=/dev/zero bs=1000 count=1300 2>/dev/null | tr '\\0' x > /dev/console; echo %s-$((1+1)) > /dev/console\n", marker)
		if _, _, err := l.shoalStdin(cmd, "vm", "console", "c1"); err != nil {
			t.Logf("console: %v", err)
		}
		want := marker + "-2"
		deadline := time.Now().Add(3 * time.Minute)
		for !strings.Contains(string(qemu.ConsoleTail(dir, 4096)), want) {
			if time.Now().After(deadline) {
				t.Fatalf("the guest did not finish writing %s", want)
			}
			time.Sleep(time.Second)
		}
		time.Sleep(5 * time.Second) // two rounds of the agent's check
		for _, name := range []string{qemu.ConsoleLog, qemu.ConsoleLogOld} {
			st, err := os.Stat(filepath.Join(dir, name))
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if st.Size() > qemu.ConsoleLogMax {
				t.Errorf("%s is %d bytes after 1.3 MB of output, over the cap of %d", name, st.Size(), qemu.ConsoleLogMax)
			}
		}
		if logs := l.mustShoal("vm", "logs", "c1"); !strings.Contains(logs, want) || len(logs) > 2*qemu.ConsoleLogMax+64<<10 {
			t.Errorf("vm logs: %d bytes, ending %q; want its end, at most twice the cap", len(logs), logs[max(len(logs)-200, 0):])
		}
	}
	flood("flood-one")
	// The agent goes away and comes back; QEMU runs on with the same fd.
	pid := l.vm("c1").PID
	l.kill()
	l.start()
	if v := l.vm("c1"); v.PID != pid {
		t.Fatalf("the VM was restarted (pid %d, was %d): the test needs it reattached", v.PID, pid)
	}
	flood("flood-two")
	// The same QEMU wrote it all, at the start of the emptied file.
	if v := l.vm("c1"); v.PID != pid {
		t.Fatalf("QEMU changed: pid %d, was %d", v.PID, pid)
	}
	b, err := os.ReadFile(filepath.Join(dir, qemu.ConsoleLog))
	if err != nil || strings.IndexByte(string(b), 0) >= 0 {
		t.Fatalf("console.log has a hole of zeros or is unreadable: %v", err)
	}
}
