package image

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func qimg(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img %v: %v\n%s", args, err, out)
	}
}

// rawWithData makes a 2 MiB raw image with a recognisable pattern.
func rawWithData(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "src.raw")
	data := make([]byte, 2<<20)
	copy(data[4096:], "shoal import test pattern")
	copy(data[len(data)-512:], "end of disk")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func checkQcow2Same(t *testing.T, dst, ref string) {
	t.Helper()
	out, err := qemuImgOutput(context.Background(), "info", "--output=json", dst)
	if err != nil || !strings.Contains(string(out), `"format": "qcow2"`) {
		t.Fatalf("%s is not qcow2: %s %v", dst, out, err)
	}
	if strings.Contains(string(out), "backing-filename") {
		t.Errorf("%s has a backing file", dst)
	}
	if out, err := exec.Command("qemu-img", "compare", "-q", dst, ref).CombinedOutput(); err != nil {
		t.Errorf("imported disk differs from the source: %v %s", err, out)
	}
}

func TestImportConvertsToQcow2(t *testing.T) {
	requireIntegration(t, "qemu-img")
	ctx := context.Background()
	dir := t.TempDir()
	raw := rawWithData(t, dir)
	for _, f := range []string{"raw", "vmdk", "vhdx", "vdi", "vpc", "qcow2"} {
		t.Run(f, func(t *testing.T) {
			src := raw
			if f != "raw" {
				src = filepath.Join(dir, "src."+f)
				qimg(t, "convert", "-f", "raw", "-O", f, raw, src)
			}
			dst := filepath.Join(dir, "out-"+f+".qcow2")
			got, err := Import(ctx, src, dst, 1<<30)
			if err != nil {
				t.Fatal(err)
			}
			if got != f {
				t.Errorf("format %q, want %q", got, f)
			}
			checkQcow2Same(t, dst, raw)
		})
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".*tmp*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

func TestImportRejects(t *testing.T) {
	requireIntegration(t, "qemu-img")
	ctx := context.Background()
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(make([]byte, 4096))
	zw.Close()
	raw := rawWithData(t, dir)

	qed := filepath.Join(dir, "disk.qed")
	qimg(t, "create", "-q", "-f", "qed", qed, "1M")
	overlay := filepath.Join(dir, "overlay.qcow2")
	qimg(t, "create", "-q", "-f", "qcow2", "-F", "raw", "-b", raw, overlay)
	flatDesc := write("evil.vmdk", []byte("# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"+
		"createType=\"monolithicFlat\"\n\nRW 1 FLAT \"/etc/hostname\" 0\n"))
	existing := write("exists.qcow2", []byte("x"))

	for _, tc := range []struct {
		name, src, dst string
		want           error
		msg            string
	}{
		{"text file", write("notes.txt", []byte("hello, not a disk\n")), "", ErrNotDiskImage, "512-byte sectors"},
		{"empty file", write("empty.img", nil), "", ErrNotDiskImage, "empty"},
		{"gzip", write("disk.img.gz", gz.Bytes()), "", ErrNotDiskImage, "decompress"},
		{"directory", dir, "", ErrNotDiskImage, "regular file"},
		{"missing", filepath.Join(dir, "nope.img"), "", fs.ErrNotExist, ""},
		{"qed", qed, "", ErrUnsupportedFormat, `"qed"`},
		{"backing file", overlay, "", ErrUnsupportedFormat, "backing file"},
		{"vmdk extent elsewhere", flatDesc, "", ErrUnsupportedFormat, "outside its directory"},
		{"dst exists", raw, existing, fs.ErrExist, "already exists"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := tc.dst
			if dst == "" {
				dst = filepath.Join(dir, "out.qcow2")
			}
			_, err := Import(ctx, tc.src, dst, 1<<30)
			if !errors.Is(err, tc.want) || !strings.Contains(fmtErr(err), tc.msg) {
				t.Errorf("Import: %v, want %v containing %q", err, tc.want, tc.msg)
			}
			if tc.dst == "" {
				if _, err := os.Stat(dst); err == nil {
					t.Errorf("%s was created", dst)
					os.Remove(dst)
				}
			}
		})
	}
	if b, _ := os.ReadFile(existing); string(b) != "x" {
		t.Error("existing destination was modified")
	}
}

func fmtErr(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
