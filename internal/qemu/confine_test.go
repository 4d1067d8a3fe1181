package qemu

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// testUID is a user id of the range Shoal gives VMs (api.VMUIDMin).
const testUID = 0x71000000 + 4242

// TestLaunchAsUser: QEMU runs as the user of its Config, in the
// sandbox, daemonized; its state dir becomes that user's, a launcher
// attaches to it again after letting go, and Kill cleans up. A
// migration target's preallocation works in the sandbox too.
func TestLaunchAsUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run QEMU as another user")
	}
	dir := testDir(t)
	ctx := testCtx(t)
	cfg := testConfig(dir, true)
	cfg.User = &User{UID: testUID, GID: testUID}
	cfg.Incoming, cfg.PreallocThreads = true, 2
	// A console.log left by a run as root is the user's now.
	if err := os.WriteFile(filepath.Join(dir, ConsoleLog), nil, 0o640); err != nil {
		t.Fatal(err)
	}
	p := launch(t, cfg)
	status, err := os.ReadFile("/proc/" + strconv.Itoa(p.Pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"Uid":     strings.Repeat(strconv.Itoa(testUID)+"\t", 3) + strconv.Itoa(testUID),
		"Gid":     strings.Repeat(strconv.Itoa(testUID)+"\t", 3) + strconv.Itoa(testUID),
		"Groups":  "",
		"Seccomp": "2",
	}
	for _, line := range strings.Split(string(status), "\n") {
		k, v, _ := strings.Cut(line, ":")
		if w, ok := want[k]; ok {
			if strings.TrimSpace(v) != w {
				t.Errorf("QEMU's %s: %q, want %q", k, strings.TrimSpace(v), w)
			}
			delete(want, k)
		}
	}
	if len(want) > 0 {
		t.Errorf("/proc status lacks %v", want)
	}
	if st, err := p.Status(ctx); err != nil || st != "inmigrate" {
		t.Fatalf("status %q, %v; want inmigrate", st, err)
	}
	for _, name := range []string{".", PidFile, QMPSocket, ConsoleLog, LogFile} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if uid := statUID(st); uid != testUID {
			t.Errorf("%s belongs to uid %d, want %d", name, uid, testUID)
		}
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	p, err = Attach(ctx, testLog(t), dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, PidFile)); !os.IsNotExist(err) {
		t.Errorf("pidfile after Kill: %v", err)
	}
}

func statUID(st os.FileInfo) int {
	return int(st.Sys().(*syscall.Stat_t).Uid)
}
