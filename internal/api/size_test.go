package api

import "testing"

// TestResizeHolds: a VM that runs holds room for the larger of the
// size it was started with and the size set, until its next start; a
// stopped VM only the size set.
func TestResizeHolds(t *testing.T) {
	running := VMSpec{Power: PowerRunning, CPUs: 2, MemoryMiB: 512}
	steps := []struct {
		cpus              int
		mem               int64
		heldCPUs, started int
		heldMem           int64
	}{
		{1, 256, 2, 2, 512},   // smaller: the QEMU still has 2, 512
		{4, 256, 4, 2, 512},   // more vCPUs, less memory
		{2, 512, 2, 0, 512},   // back to what it runs at: nothing kept
		{4, 1024, 4, 2, 1024}, // larger
	}
	for i, st := range steps {
		running.Resize(st.cpus, st.mem)
		c, m := running.HeldSize()
		if c != st.heldCPUs || m != st.heldMem || running.StartedCPUs != st.started {
			t.Errorf("step %d (%d, %d): holds %d, %d, started %d; want %d, %d, %d", i, st.cpus, st.mem, c, m, running.StartedCPUs, st.heldCPUs, st.heldMem, st.started)
		}
	}
	stopped := VMSpec{Power: PowerStopped, CPUs: 2, MemoryMiB: 512, StartedCPUs: 4, StartedMemoryMiB: 2048}
	if c, m := stopped.HeldSize(); c != 2 || m != 512 {
		t.Errorf("a stopped VM holds %d, %d; want the size set, 2, 512", c, m)
	}
	stopped.Resize(1, 128)
	if stopped.StartedCPUs != 0 || stopped.StartedMemoryMiB != 0 {
		t.Errorf("a stopped VM keeps a started size: %+v", stopped)
	}
	migrating := VMSpec{Power: PowerRunning, CPUs: 1, MemoryMiB: 128, Migration: &Migration{CPUs: 2, MemoryMiB: 256}}
	if c, m := migrating.HeldSize(); c != 2 || m != 256 {
		t.Errorf("a VM that migrates at 2, 256 holds %d, %d", c, m)
	}
}
