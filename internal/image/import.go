package image

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

var (
	// ErrNotDiskImage is wrapped by Import when the source is not a disk
	// image (a text file, an archive, ...).
	ErrNotDiskImage = errors.New("not a disk image")
	// ErrUnsupportedFormat is wrapped by Import for disk image formats
	// (or features, such as backing files) that it does not take.
	ErrUnsupportedFormat = errors.New("unsupported disk image format")
)

// importFormats are the qemu-img format names Import accepts.
var importFormats = map[string]bool{
	"qcow2": true,
	"raw":   true,
	"vmdk":  true,
	"vhdx":  true,
	"vdi":   true,
	"vpc":   true, // VHD
}

// imageInfo is the part of `qemu-img info --output=json` that Import uses.
type imageInfo struct {
	Format          string `json:"format"`
	VirtualSize     int64  `json:"virtual-size"`
	BackingFilename string `json:"backing-filename"`
	FormatSpecific  struct {
		Type string `json:"type"`
		Data struct {
			Extents []struct {
				Filename string `json:"filename"`
			} `json:"extents"`
			DataFile string `json:"data-file"`
		} `json:"data"`
	} `json:"format-specific"`
}

// archiveMagics are signatures of files people mistake for disk images.
var archiveMagics = []struct {
	off   int
	magic string
	what  string
}{
	{0, "\x1f\x8b", "a gzip file; decompress it first"},
	{0, "\xfd7zXZ\x00", "an xz file; decompress it first"},
	{0, "\x28\xb5\x2f\xfd", "a zstd file; decompress it first"},
	{0, "BZh", "a bzip2 file; decompress it first"},
	{0, "PK\x03\x04", "a zip archive; extract the disk image first"},
	{257, "ustar", "a tar archive (an OVA?); extract the disk image first"},
}

// Import converts a disk image (qcow2, raw, vmdk, vhdx, vdi, or vpc/VHD;
// format detected by `qemu-img info --output=json`) to a standalone qcow2 at
// dst and returns the detected format. It refuses to overwrite dst, and
// rejects images with a backing file or with VMDK extents outside the
// source's directory, since those would read other host files. The output is
// written to a temporary file and renamed, so dst is never partial. qemu-img
// runs sandboxed (see Limits); the output may take at most room bytes
// (ErrNoRoom).
func Import(ctx context.Context, src, dst string, room int64) (format string, err error) {
	// An absolute path also keeps qemu-img from reading "json:" or
	// "proto:" prefixes in the name as protocols.
	if src, err = filepath.Abs(src); err != nil {
		return "", fmt.Errorf("image: import: %w", err)
	}
	st, err := os.Stat(src)
	if err != nil {
		return "", fmt.Errorf("image: import: %w", err)
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("image: import: %s is not a regular file: %w", src, ErrNotDiskImage)
	}
	if st.Size() == 0 {
		return "", fmt.Errorf("image: import: %s is empty: %w", src, ErrNotDiskImage)
	}
	if what, err := sniffArchive(src); err != nil {
		return "", fmt.Errorf("image: import: %w", err)
	} else if what != "" {
		return "", fmt.Errorf("image: import: %s is %s: %w", src, what, ErrNotDiskImage)
	}
	if _, err := os.Lstat(dst); err == nil {
		return "", fmt.Errorf("image: import: %s already exists: %w", dst, fs.ErrExist)
	}

	in, err := os.Open(src)
	if err != nil {
		return "", fmt.Errorf("image: import: %w", err)
	}
	defer in.Close()
	out, err := sandboxed(ctx, InfoLimits, []*os.File{in}, "info", "--output=json", fdPath(0))
	if err != nil {
		return "", fmt.Errorf("image: import: %s is not a readable disk image: %w (%w)", src, ErrNotDiskImage, err)
	}
	var info imageInfo
	if err := json.Unmarshal(out, &info); err != nil {
		return "", fmt.Errorf("image: import: parse qemu-img info: %w", err)
	}
	format = info.Format
	if !importFormats[format] {
		return format, fmt.Errorf("image: import: %s is in format %q; supported: qcow2, raw, vmdk, vhdx, vdi, vpc: %w",
			src, format, ErrUnsupportedFormat)
	}
	if format == "raw" && st.Size()%512 != 0 {
		return format, fmt.Errorf("image: import: %s is %d bytes, not a whole number of 512-byte sectors, "+
			"so not a raw disk image: %w", src, st.Size(), ErrNotDiskImage)
	}
	if info.BackingFilename != "" {
		return format, fmt.Errorf("image: import: %s has a backing file (%s); flatten it first with "+
			"qemu-img convert -O qcow2: %w", src, info.BackingFilename, ErrUnsupportedFormat)
	}
	if df := info.FormatSpecific.Data.DataFile; df != "" {
		return format, fmt.Errorf("image: import: %s keeps its data in an external file (%s); "+
			"convert it to a self-contained image first: %w", src, df, ErrUnsupportedFormat)
	}
	if err := checkExtents(src, info); err != nil {
		return format, fmt.Errorf("image: import: %w", err)
	}

	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp-")
	if err != nil {
		return format, fmt.Errorf("image: import: %w", err)
	}
	tmpName := tmp.Name()
	defer os.Remove(tmpName) // no-op after the rename
	lim := ConvertLimits
	lim.FileSize = room
	_, err = sandboxed(ctx, lim, []*os.File{in, tmp}, "convert", "-q", "-f", format, "-O", "qcow2", fdPath(0), fdPath(1))
	tmp.Close()
	if err != nil {
		return format, fmt.Errorf("image: import %s: %w", src, err)
	}
	if err := syncPath(tmpName); err != nil {
		return format, fmt.Errorf("image: import: %w", err)
	}
	if err := os.Chmod(tmpName, 0o644); err != nil {
		return format, fmt.Errorf("image: import: %w", err)
	}
	// Link (not rename) so that a dst created meanwhile is not replaced.
	if err := os.Link(tmpName, dst); err != nil {
		return format, fmt.Errorf("image: import: install %s: %w", dst, err)
	}
	if err := syncPath(filepath.Dir(dst)); err != nil {
		return format, fmt.Errorf("image: import: %w", err)
	}
	return format, nil
}

// sniffArchive names the archive or compression format of p, or "".
func sniffArchive(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	head := make([]byte, 512)
	n, err := io.ReadFull(f, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return "", err
	}
	head = head[:n]
	for _, m := range archiveMagics {
		if len(head) >= m.off+len(m.magic) && bytes.Equal(head[m.off:m.off+len(m.magic)], []byte(m.magic)) {
			return m.what, nil
		}
	}
	return "", nil
}

// checkExtents rejects VMDK descriptors whose extents are not regular files
// next to the descriptor (a crafted descriptor could name /dev/sda).
func checkExtents(src string, info imageInfo) error {
	dir := filepath.Dir(src) // src is absolute
	for _, e := range info.FormatSpecific.Data.Extents {
		p := e.Filename
		if p == "" || p == fdPath(0) { // none, or the image itself
			continue
		}
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		rel, err := filepath.Rel(dir, filepath.Clean(p))
		if err != nil || strings.HasPrefix(rel, "..") || strings.Contains(rel, string(filepath.Separator)) {
			return fmt.Errorf("%s refers to extent %s outside its directory: %w", src, e.Filename, ErrUnsupportedFormat)
		}
		if st, err := os.Stat(p); err != nil || !st.Mode().IsRegular() {
			return fmt.Errorf("%s refers to extent %s, which is not a regular file: %w", src, e.Filename, ErrUnsupportedFormat)
		}
	}
	return nil
}
