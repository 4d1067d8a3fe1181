package image

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestCompareVersions(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
	}{
		{"6.1.0-56-cloud-amd64", "6.1.0-9-cloud-amd64", 1},
		{"6.1.0-9-cloud-amd64", "6.12.0-1-cloud-amd64", -1},
		{"6.1.0-9-cloud-amd64", "6.1.0-9-cloud-amd64", 0},
		{"6.1.0-9-cloud-amd64", "6.1.0-9.1-cloud-amd64", -1},
	} {
		if got := compareVersions(tc.a, tc.b); got != tc.want {
			t.Errorf("compareVersions(%s, %s) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
}

func TestFindCloudKernelIn(t *testing.T) {
	boot, mods := t.TempDir(), t.TempDir()
	if _, _, err := findCloudKernelIn(boot, mods); err == nil ||
		!strings.Contains(err.Error(), "apt-get install linux-image-cloud-amd64") || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("empty /boot: %v", err)
	}
	for _, v := range []string{"6.1.0-9-cloud-amd64", "6.1.0-56-cloud-amd64", "6.1.0-60-cloud-amd64"} {
		if err := os.WriteFile(filepath.Join(boot, "vmlinuz-"+v), []byte("k"), 0o600); err != nil {
			t.Fatal(err)
		}
		if v == "6.1.0-60-cloud-amd64" {
			continue // no modules installed: not a candidate
		}
		if err := os.MkdirAll(filepath.Join(mods, v), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(mods, v, "modules.dep"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	k, m, err := findCloudKernelIn(boot, mods)
	if err != nil {
		t.Fatal(err)
	}
	if k != filepath.Join(boot, "vmlinuz-6.1.0-56-cloud-amd64") || m != filepath.Join(mods, "6.1.0-56-cloud-amd64") {
		t.Errorf("got %s %s", k, m)
	}
}

// fakeTinyInputs returns options with a fake kernel and modules, and the
// host's busybox.
func fakeTinyInputs(t *testing.T) TinyOptions {
	t.Helper()
	requireIntegration(t, "qemu-img", "busybox")
	var dep strings.Builder
	for _, m := range tinyModules {
		dep.WriteString("kernel/" + m + ".ko:\n")
	}
	mods := fakeModules(t, dep.String(), "")
	kernel := filepath.Join(t.TempDir(), "vmlinuz-test")
	if err := os.WriteFile(kernel, []byte("not really a kernel"), 0o600); err != nil {
		t.Fatal(err)
	}
	bb, err := filepath.EvalSymlinks("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	return TinyOptions{KernelPath: kernel, ModulesDir: mods, BusyboxPath: bb}
}

func TestBuildTinyContentsAndIdempotence(t *testing.T) {
	opts := fakeTinyInputs(t)
	ctx := context.Background()
	parent := t.TempDir()
	out := filepath.Join(parent, "tiny")
	art, err := BuildTiny(ctx, testLogger(t), out, opts)
	if err != nil {
		t.Fatal(err)
	}
	if art.Kernel != filepath.Join(out, "vmlinuz") || art.Initrd != filepath.Join(out, "initrd.img") ||
		art.Disk != filepath.Join(out, "disk.qcow2") || art.Cmdline != TinyCmdline {
		t.Errorf("artifacts %+v", art)
	}
	if b, err := os.ReadFile(art.Kernel); err != nil || string(b) != "not really a kernel" {
		t.Errorf("kernel copy: %q %v", b, err)
	}
	if o, err := qemuImgOutput(ctx, "info", "--output=json", art.Disk); err != nil ||
		!strings.Contains(string(o), `"format": "qcow2"`) || !strings.Contains(string(o), `"virtual-size": 67108864`) {
		t.Errorf("disk: %s %v", o, err)
	}

	entries := readInitrd(t, art.Initrd)
	byName := map[string]cpioEntry{}
	for _, e := range entries {
		byName[e.Name] = e
	}
	for _, n := range []string{"init", "bin/busybox", "bin/sh", "dev/console", "etc/shoal/lib.sh",
		"etc/shoal/modules", "www/cgi-bin/index.cgi", "etc/shoal/disks.cgi", "www/disks", "www/vol", "etc/profile",
		"lib/modules/virtio_pci.ko"} {
		if _, ok := byName[n]; !ok {
			t.Errorf("initramfs lacks %s", n)
		}
	}
	if e := byName["init"]; e.Mode != 0o100755 || !bytes.HasPrefix(e.Data, []byte("#!/bin/busybox sh\n")) {
		t.Errorf("init: mode %o", e.Mode)
	}
	if e := byName["dev/console"]; e.Mode != 0o020600 || e.Major != 5 || e.Minor != 1 {
		t.Errorf("dev/console: %+v", e)
	}
	if got := strings.Fields(string(byName["etc/shoal/modules"].Data)); !slices.Equal(got, tinyModules) {
		t.Errorf("module order %v", got)
	}
	if !bytes.Contains(byName["init"].Data, []byte(TinyProbeOK)) || !bytes.Contains(byName["init"].Data, []byte(TinyProbeArg)) {
		t.Error("init does not implement the probe contract")
	}

	// Same inputs: nothing is rewritten.
	st1, _ := os.Stat(art.Disk)
	if _, err := BuildTiny(ctx, testLogger(t), out, opts); err != nil {
		t.Fatal(err)
	}
	st2, _ := os.Stat(art.Disk)
	if !os.SameFile(st1, st2) || !st1.ModTime().Equal(st2.ModTime()) {
		t.Error("second build with the same inputs rewrote the image")
	}

	// Changed input: rebuilt in place, nothing left behind.
	if err := os.WriteFile(opts.KernelPath, []byte("another kernel"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := BuildTiny(ctx, testLogger(t), out, opts); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(art.Kernel); string(b) != "another kernel" {
		t.Errorf("kernel not rebuilt: %q", b)
	}
	left, _ := os.ReadDir(parent)
	if len(left) != 1 || left[0].Name() != "tiny" {
		t.Errorf("parent dir holds %v, want only tiny", left)
	}
}

func TestBuildTinyFailureLeavesNothing(t *testing.T) {
	opts := fakeTinyInputs(t)
	parent := t.TempDir()
	opts.ModulesDir = t.TempDir() // no modules.dep
	if _, err := BuildTiny(context.Background(), testLogger(t), filepath.Join(parent, "tiny"), opts); err == nil {
		t.Fatal("build without modules succeeded")
	}
	opts = fakeTinyInputs(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // qemu-img cannot run: the build fails after writing files
	if _, err := BuildTiny(ctx, testLogger(t), filepath.Join(parent, "tiny"), opts); err == nil {
		t.Fatal("build with a cancelled context succeeded")
	}
	if left, _ := os.ReadDir(parent); len(left) != 0 {
		t.Errorf("failed builds left %v", left)
	}
	opts.BusyboxPath = filepath.Join(parent, "nope")
	if _, err := BuildTiny(context.Background(), testLogger(t), filepath.Join(parent, "tiny"), opts); err == nil ||
		!strings.Contains(err.Error(), "busybox-static") {
		t.Errorf("missing busybox: %v", err)
	}
}

func readInitrd(t *testing.T, p string) []cpioEntry {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := readCPIO(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	return entries
}
