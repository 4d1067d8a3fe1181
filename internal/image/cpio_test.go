package image

import (
	"bytes"
	"os/exec"
	"strings"
	"testing"
)

func TestCPIORoundTrip(t *testing.T) {
	var buf bytes.Buffer
	w := newCPIOWriter(&buf)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(w.Dir("bin", 0o755))
	must(w.Dir("/dev", 0o755)) // leading slash is dropped
	must(w.CharDev("dev/console", 0o600, 5, 1))
	must(w.File("bin/busybox", 0o755, []byte("ELF...")))
	must(w.File("empty", 0o644, nil))
	must(w.File("odd", 0o600, []byte("abc"))) // needs padding
	must(w.Symlink("bin/sh", "busybox"))
	must(w.Close())
	if err := w.File("late", 0o644, nil); err == nil {
		t.Error("write after Close succeeded")
	}
	if buf.Len()%4 != 0 {
		t.Errorf("archive length %d is not 4-byte aligned", buf.Len())
	}
	raw := buf.Bytes()

	got, err := readCPIO(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	want := []cpioEntry{
		{Name: "bin", Mode: 0o040755},
		{Name: "dev", Mode: 0o040755},
		{Name: "dev/console", Mode: 0o020600, Major: 5, Minor: 1},
		{Name: "bin/busybox", Mode: 0o100755, Data: []byte("ELF...")},
		{Name: "empty", Mode: 0o100644},
		{Name: "odd", Mode: 0o100600, Data: []byte("abc")},
		{Name: "bin/sh", Mode: 0o120777, Data: []byte("busybox")},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d entries, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Name != w.Name || g.Mode != w.Mode || g.Major != w.Major || g.Minor != w.Minor || !bytes.Equal(g.Data, w.Data) {
			t.Errorf("entry %d = %+v, want %+v", i, g, w)
		}
	}

	// The system cpio must read it too (as the kernel does).
	if _, err := exec.LookPath("cpio"); err == nil {
		cmd := exec.Command("cpio", "-t", "--quiet")
		cmd.Stdin = bytes.NewReader(raw)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("cpio -t: %v\n%s", err, out)
		}
		names := strings.Fields(string(out))
		if strings.Join(names, " ") != "bin dev dev/console bin/busybox empty odd bin/sh" {
			t.Errorf("cpio -t listed %q", names)
		}
	}
}

func TestCPIORejectsBadNames(t *testing.T) {
	w := newCPIOWriter(&bytes.Buffer{})
	for _, n := range []string{"", "/", cpioTrailer} {
		if err := w.File(n, 0o644, nil); err == nil {
			t.Errorf("name %q accepted", n)
		}
	}
}

func TestReadCPIOTruncated(t *testing.T) {
	var buf bytes.Buffer
	w := newCPIOWriter(&buf)
	_ = w.File("a", 0o644, []byte("hello"))
	_ = w.Close()
	if _, err := readCPIO(bytes.NewReader(buf.Bytes()[:buf.Len()-20])); err == nil {
		t.Error("truncated archive parsed without error")
	}
}
