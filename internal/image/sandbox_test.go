package image

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// standIn puts a script in the place of qemu-img for the test, in a
// directory the sandbox user can reach.
func standIn(t *testing.T, script string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "qemu-img-stand-in-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "qemu-img")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"+script), 0o755); err != nil {
		t.Fatal(err)
	}
	old := qemuImgBin
	qemuImgBin = bin
	t.Cleanup(func() { qemuImgBin = old })
}

func owner(t *testing.T, p string) uint32 {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Sys().(*syscall.Stat_t).Uid
}

// qemu-img runs as nobody, under the limits, and reaches the files it is
// given (lent to it for the run only).
func TestSandboxRunsQemuImgUnprivilegedUnderLimits(t *testing.T) {
	requireIntegration(t, "prlimit")
	standIn(t, `id -u; id -g; head -c 5 /proc/self/fd/3; echo; grep -E "^Max (cpu time|file size|address space|core)" /proc/self/limits`)
	p := filepath.Join(t.TempDir(), "upload")
	if err := os.WriteFile(p, []byte("hello world"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out, err := sandboxed(context.Background(), Limits{CPU: 7e9, Memory: 300 << 20, FileSize: 12345}, []*os.File{f}, "info", fdPath(0))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) < 7 {
		t.Fatalf("stand-in printed %q", out)
	}
	nobody := strconv.Itoa(SandboxUID)
	if lines[0] != nobody || lines[1] != strconv.Itoa(SandboxGID) {
		t.Errorf("qemu-img ran as uid %s gid %s, want %d %d", lines[0], lines[1], SandboxUID, SandboxGID)
	}
	if lines[2] != "hello" {
		t.Errorf("qemu-img read %q of the file it was given", lines[2])
	}
	want := map[string]string{"Max cpu time": "7", "Max file size": "12345", "Max address space": strconv.Itoa(300 << 20), "Max core file size": "0"}
	for _, l := range lines[3:] {
		for name, v := range want {
			if strings.HasPrefix(l, name+" ") {
				if fields := strings.Fields(strings.TrimPrefix(l, name)); len(fields) < 2 || fields[0] != v || fields[1] != v {
					t.Errorf("limit %q, want soft and hard %s", l, v)
				}
				delete(want, name)
			}
		}
	}
	if len(want) != 0 {
		t.Errorf("limits not set: %v", want)
	}
	if u := owner(t, p); u != 0 {
		t.Errorf("the file is owned by uid %d after the run, want it given back to root", u)
	}
}

// A qemu-img that goes over its limits is stopped, and Import says why.
func TestImportStopsQemuImgAtItsLimits(t *testing.T) {
	requireIntegration(t, "qemu-img", "prlimit")
	ctx := context.Background()
	dir := t.TempDir()
	raw := rawWithData(t, dir)

	// Output that would not fit the room given: qemu-img is stopped at it.
	if _, err := Import(ctx, raw, filepath.Join(dir, "small.qcow2"), 64<<10); !errors.Is(err, ErrNoRoom) {
		t.Errorf("Import into 64 KiB of room: %v, want ErrNoRoom", err)
	}
	// An image whose reading needs more memory than allowed.
	old := InfoLimits
	InfoLimits.Memory = 16 << 20
	t.Cleanup(func() { InfoLimits = old })
	_, err := Import(ctx, raw, filepath.Join(dir, "mem.qcow2"), 1<<30)
	if !errors.Is(err, ErrNotDiskImage) {
		t.Errorf("Import with 16 MiB of memory for qemu-img: %v, want it refused", err)
	}
	t.Logf("with 16 MiB: %v", err)
	// A loop without end: the stand-in spins until the CPU limit.
	InfoLimits = Limits{CPU: 1e9, Memory: 1 << 30}
	standIn(t, "while :; do :; done\n")
	if _, err := Import(ctx, raw, filepath.Join(dir, "cpu.qcow2"), 1<<30); err == nil || !strings.Contains(err.Error(), "CPU time") {
		t.Errorf("Import by a qemu-img that spins: %v, want it stopped for its CPU time", err)
	}
	for _, n := range []string{"small.qcow2", "mem.qcow2", "cpu.qcow2"} {
		if _, err := os.Stat(filepath.Join(dir, n)); err == nil {
			t.Errorf("%s was left", n)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".*tmp*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
}
