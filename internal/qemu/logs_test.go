package qemu

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A writer that holds the log open with O_APPEND, as QEMU does with
// logappend=on, writes far more than the cap: with CapLog between its
// writes the log stays bounded, its writes land at the start of the
// emptied file (no hole, no growth on an unseen inode), and the last
// output is still there to read.
func TestCapLogBoundsAnAppendingWriter(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, ConsoleLog)
	w, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	const limit, chunk = 64 << 10, 4 << 10
	line := bytes.Repeat([]byte("x"), chunk-1)
	rotations := 0
	for i := range 1000 { // 4 MB, 64 times the cap
		if _, err := w.Write(append(line, '\n')); err != nil {
			t.Fatal(err)
		}
		if i == 999 {
			if _, err := w.WriteString("last words\n"); err != nil {
				t.Fatal(err)
			}
		}
		rotated, err := CapLog(path, limit)
		if err != nil {
			t.Fatal(err)
		}
		if rotated {
			rotations++
		}
		for _, p := range []string{path, path + ".1"} {
			if st, err := os.Stat(p); err == nil && st.Size() > limit {
				t.Fatalf("after write %d, %s is %d bytes: over the cap of %d", i, filepath.Base(p), st.Size(), limit)
			}
		}
	}
	if rotations < 50 {
		t.Fatalf("rotated %d times for 64 times the cap", rotations)
	}
	// The writer's fd still writes into the file we read.
	if _, err := w.WriteString("after\n"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.IndexByte(b, 0) >= 0 {
		t.Fatalf("console.log has a hole of zeros: the writer wrote past the truncation")
	}
	if !bytes.HasSuffix(b, []byte("after\n")) {
		t.Fatalf("the writer's output is not in console.log: %q", tailString(b))
	}
	got := string(ConsoleTail(dir, 64))
	if !strings.HasSuffix(got, "last words\nafter\n") || len(got) != 64 {
		t.Fatalf("ConsoleTail = %q", got)
	}
}

func tailString(b []byte) string { return string(b[max(len(b)-80, 0):]) }

func TestCapLogLeavesSmallAndMissingLogs(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, ConsoleLog)
	if rotated, err := CapLog(path, 10); rotated || err != nil {
		t.Fatalf("missing log: %v %v", rotated, err)
	}
	if err := os.WriteFile(path, []byte("0123456789"), 0o640); err != nil {
		t.Fatal(err)
	}
	if rotated, err := CapLog(path, 10); rotated || err != nil {
		t.Fatalf("log at the cap: %v %v", rotated, err)
	}
	if _, err := os.Stat(path + ".1"); !os.IsNotExist(err) {
		t.Fatalf("a log at its cap was rotated: %v", err)
	}
}

// A log that grew huge while no agent watched (the agent was down) keeps
// only its last part, and the reading is of that part only.
func TestCapLogOfAHugeLogKeepsItsTail(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, ConsoleLog)
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(1 << 30); err != nil { // sparse: 1 GiB that takes no disk
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("kernel panic\n"), 1<<30); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if rotated, err := CapLog(path, ConsoleLogMax); !rotated || err != nil {
		t.Fatalf("CapLog = %v, %v", rotated, err)
	}
	st, err := os.Stat(path + ".1")
	if err != nil || st.Size() != ConsoleLogMax {
		t.Fatalf("console.log.1: %v %v, want %d bytes", st, err, ConsoleLogMax)
	}
	if got := string(ConsoleTail(dir, 13)); got != "kernel panic\n" {
		t.Fatalf("ConsoleTail = %q", got)
	}
	if st, err := os.Stat(path); err != nil || st.Size() != 0 {
		t.Fatalf("console.log after rotation: %v %v", st, err)
	}
}

func TestReadTailSpansFiles(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	if err := os.WriteFile(a, []byte("0123456789"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(b, []byte("abcdef"), 0o640); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		n     int64
		paths []string
		want  string
	}{
		{3, []string{a, b}, "def"},
		{6, []string{a, b}, "abcdef"},
		{9, []string{a, b}, "789abcdef"},
		{100, []string{a, b}, "0123456789abcdef"},
		{4, []string{a, filepath.Join(dir, "missing")}, "6789"},
		{4, []string{filepath.Join(dir, "missing")}, ""},
	} {
		if got := string(ReadTail(tc.n, tc.paths...)); got != tc.want {
			t.Errorf("ReadTail(%d) = %q, want %q", tc.n, got, tc.want)
		}
	}
}

func TestOpenConsoleLogServesOldThenNew(t *testing.T) {
	dir := t.TempDir()
	if _, err := OpenConsoleLog(dir); !os.IsNotExist(err) {
		t.Fatalf("a VM that never ran: %v, want not exist", err)
	}
	if err := os.WriteFile(filepath.Join(dir, ConsoleLogOld), []byte("older\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ConsoleLog), []byte("newer\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	r, err := OpenConsoleLog(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil || string(b) != "older\nnewer\n" {
		t.Fatalf("console log = %q, %v", b, err)
	}
}

// TestLogsFollowNoLink: a VM's QEMU user owns its dir, so its console log
// may be a link to a host file; the agent then neither truncates, copies
// nor serves that file.
func TestLogsFollowNoLink(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(t.TempDir(), "ca.key")
	content := strings.Repeat("secret key material\n", 100)
	if err := os.WriteFile(secret, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(secret, filepath.Join(dir, ConsoleLog)); err != nil {
		t.Fatal(err)
	}
	if _, err := CapLog(filepath.Join(dir, ConsoleLog), 10); err == nil {
		t.Error("CapLog went through a link")
	}
	if b, _ := os.ReadFile(secret); string(b) != content {
		t.Fatalf("the linked file was changed: %d bytes left", len(b))
	}
	if _, err := os.Stat(filepath.Join(dir, ConsoleLogOld)); err == nil {
		t.Error("the linked file was copied into the VM's dir")
	}
	if b := ConsoleTail(dir, 1<<10); len(b) != 0 {
		t.Errorf("ConsoleTail read through a link: %q", b)
	}
	if rc, err := OpenConsoleLog(dir); err == nil {
		rc.Close()
		t.Error("OpenConsoleLog opened a link")
	}
}

// TestPidfileFollowsNoLink: QEMU's user writes its pidfile; a link there
// to a host file is not read, and no content shows in the error.
func TestPidfileFollowsNoLink(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(t.TempDir(), "ca.key")
	if err := os.WriteFile(secret, []byte("4242 SECRET"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(secret, filepath.Join(dir, PidFile)); err != nil {
		t.Fatal(err)
	}
	_, _, err := findRunning(dir)
	if err == nil || strings.Contains(err.Error(), "SECRET") || strings.Contains(err.Error(), "4242") {
		t.Errorf("findRunning through a linked pidfile: %v", err)
	}
}
