package agent

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/shoalvm/shoal/internal/qemu"
)

// hugeLog makes a sparse file of 1 GiB (no disk) that ends with last.
func hugeLog(t *testing.T, path, last string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(1 << 30); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte(last), 1<<30); err != nil {
		t.Fatal(err)
	}
}

// allocated returns the bytes fn allocates.
func allocated(fn func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// After a crash the agent reads the end of the console and QEMU's log, not
// all of what a guest may have written.
func TestAgentReadsOnlyTheTailsOfHugeLogs(t *testing.T) {
	dir := t.TempDir()
	hugeLog(t, filepath.Join(dir, qemu.ConsoleLog), "\nKernel panic - not syncing\nend Kernel panic\n")
	hugeLog(t, filepath.Join(dir, qemu.LogFile), "\nqemu: fatal: bad\n")
	var console, qlog string
	n := allocated(func() {
		console = consoleTail(dir, 2)
		qlog = qemuLogTail(dir)
	})
	if console != "Kernel panic - not syncing\nend Kernel panic" {
		t.Errorf("console tail = %q", console)
	}
	if qlog != "qemu: fatal: bad" {
		t.Errorf("qemu.log tail = %q", qlog)
	}
	if n > 1<<20 {
		t.Errorf("reading the tails of two 1 GiB logs allocated %d bytes, want at most 1 MiB", n)
	}
}
