// Package image builds and imports guest disk images: the "tiny" guest (a
// Debian cloud kernel plus a busybox initramfs that serves the boot/count/disk
// HTTP contract of DESIGN.md) and the conversion of foreign disk images to
// qcow2.
package image

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
)

// File names inside a tiny image directory.
const (
	TinyKernelFile   = "vmlinuz"
	TinyInitrdFile   = "initrd.img"
	TinyDiskFile     = "disk.qcow2"
	tinyManifestFile = "manifest.json"

	// TinyCmdline is the kernel command line the tiny guest expects.
	TinyCmdline = "console=ttyS0 quiet panic=-1 oops=panic"
	// TinyProbeArg, appended to the command line, makes the guest print
	// TinyProbeOK on the console and power off at once.
	TinyProbeArg = "shoal.probe=1"
	// TinyProbeOK is the console line printed in probe mode.
	TinyProbeOK = "SHOAL-PROBE-OK"
	// TinyBanner prefixes the console line the guest prints once it
	// serves HTTP: "shoal-tiny: serving on <ip>".
	TinyBanner = "shoal-tiny: serving on "

	tinyDiskSize = "64M"
	// tinyFormat changes whenever the image layout or the guest scripts
	// change incompatibly; it is part of the manifest fingerprint.
	tinyFormat = "shoal-tiny/1"
)

//go:embed guest/init.sh guest/lib.sh guest/index.cgi guest/disks.cgi guest/profile.sh guest/udhcpc.sh guest/disklog.sh
var guestFS embed.FS

// TinyOptions selects the inputs of the tiny image. Zero values pick the
// defaults.
type TinyOptions struct {
	KernelPath  string // default: newest /boot/vmlinuz-*-cloud-amd64
	ModulesDir  string // default: /lib/modules/<version matching kernel>
	BusyboxPath string // default: /bin/busybox
}

// TinyArtifacts are the absolute paths of a built tiny image.
type TinyArtifacts struct {
	Kernel  string // kernel copied into outDir ("vmlinuz")
	Initrd  string // gzip'd newc initramfs ("initrd.img")
	Disk    string // blank base disk ("disk.qcow2"), 64 MiB virtual
	Cmdline string // kernel command line to boot with
}

// tinyManifest is written last into a built image directory; a directory
// whose manifest matches the inputs is complete and need not be rebuilt.
type tinyManifest struct {
	Format      string   `json:"format"`
	Fingerprint string   `json:"fingerprint"`
	Kernel      string   `json:"kernel"`
	Busybox     string   `json:"busybox"`
	Modules     []string `json:"modules"`
	Cmdline     string   `json:"cmdline"`
}

const (
	bootDir       = "/boot"
	modulesRoot   = "/lib/modules"
	cloudKernelGl = "vmlinuz-*-cloud-amd64"
)

// FindCloudKernel returns the newest Debian cloud kernel and its modules
// dir, or an error saying to apt-get install linux-image-cloud-amd64.
func FindCloudKernel() (kernel, modulesDir string, err error) {
	return findCloudKernelIn(bootDir, modulesRoot)
}

func findCloudKernelIn(boot, modRoot string) (string, string, error) {
	matches, err := filepath.Glob(filepath.Join(boot, cloudKernelGl))
	if err != nil {
		return "", "", fmt.Errorf("image: find cloud kernel: %w", err)
	}
	type cand struct{ kernel, version string }
	var cands []cand
	for _, m := range matches {
		v := strings.TrimPrefix(filepath.Base(m), "vmlinuz-")
		if _, err := os.Stat(filepath.Join(modRoot, v, "modules.dep")); err != nil {
			continue
		}
		cands = append(cands, cand{m, v})
	}
	if len(cands) == 0 {
		return "", "", fmt.Errorf("image: no Debian cloud kernel with modules in %s and %s; "+
			"run: apt-get install linux-image-cloud-amd64: %w", boot, modRoot, fs.ErrNotExist)
	}
	best := cands[0]
	for _, c := range cands[1:] {
		if compareVersions(c.version, best.version) > 0 {
			best = c
		}
	}
	return best.kernel, filepath.Join(modRoot, best.version), nil
}

var (
	versionRe = regexp.MustCompile(`^[0-9.\-+~]*`)
	digitsRe  = regexp.MustCompile(`[0-9]+`)
)

// compareVersions compares kernel release strings by the numbers of their
// leading version part ("6.1.0-56-cloud-amd64" > "6.1.0-9-cloud-amd64"),
// falling back to a string comparison.
func compareVersions(a, b string) int {
	na := digitsRe.FindAllString(versionRe.FindString(a), -1)
	nb := digitsRe.FindAllString(versionRe.FindString(b), -1)
	for i := 0; i < len(na) && i < len(nb); i++ {
		x, _ := strconv.ParseUint(na[i], 10, 64)
		y, _ := strconv.ParseUint(nb[i], 10, 64)
		if x != y {
			if x < y {
				return -1
			}
			return 1
		}
	}
	if len(na) != len(nb) {
		if len(na) < len(nb) {
			return -1
		}
		return 1
	}
	return strings.Compare(a, b)
}

// resolveTinyOptions fills in defaults and checks that the inputs exist.
func resolveTinyOptions(opts TinyOptions) (TinyOptions, error) {
	if opts.KernelPath == "" {
		k, m, err := FindCloudKernel()
		if err != nil {
			return opts, err
		}
		opts.KernelPath = k
		if opts.ModulesDir == "" {
			opts.ModulesDir = m
		}
	}
	if opts.ModulesDir == "" {
		v := strings.TrimPrefix(filepath.Base(opts.KernelPath), "vmlinuz-")
		opts.ModulesDir = filepath.Join(modulesRoot, v)
	}
	if opts.BusyboxPath == "" {
		opts.BusyboxPath = "/bin/busybox"
	}
	for _, p := range []struct{ what, path, hint string }{
		{"kernel", opts.KernelPath, "apt-get install linux-image-cloud-amd64"},
		{"busybox", opts.BusyboxPath, "apt-get install busybox-static"},
	} {
		st, err := os.Stat(p.path)
		if err != nil {
			return opts, fmt.Errorf("image: tiny %s %s (%s): %w", p.what, p.path, p.hint, err)
		}
		if !st.Mode().IsRegular() {
			return opts, fmt.Errorf("image: tiny %s %s is not a regular file: %w", p.what, p.path, fs.ErrInvalid)
		}
	}
	return opts, nil
}

// BuildTiny builds the tiny guest image into outDir: the kernel, an
// initramfs holding busybox, the needed modules and the init script, and a
// blank qcow2 base disk. The build happens in a temporary sibling directory
// that is renamed into place, so outDir is either absent, the old image, or
// the complete new one. If outDir already holds an image built from the same
// inputs it is returned untouched.
func BuildTiny(ctx context.Context, log *slog.Logger, outDir string, opts TinyOptions) (TinyArtifacts, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	abs, err := filepath.Abs(outDir)
	if err != nil {
		return TinyArtifacts{}, fmt.Errorf("image: tiny: %w", err)
	}
	outDir = abs
	art := TinyArtifacts{
		Kernel:  filepath.Join(outDir, TinyKernelFile),
		Initrd:  filepath.Join(outDir, TinyInitrdFile),
		Disk:    filepath.Join(outDir, TinyDiskFile),
		Cmdline: TinyCmdline,
	}
	opts, err = resolveTinyOptions(opts)
	if err != nil {
		return TinyArtifacts{}, err
	}
	mods, err := resolveModules(opts.ModulesDir, tinyModules)
	if err != nil {
		return TinyArtifacts{}, fmt.Errorf("image: tiny: %w", err)
	}
	initrd, err := buildInitramfs(opts.BusyboxPath, mods)
	if err != nil {
		return TinyArtifacts{}, fmt.Errorf("image: tiny: %w", err)
	}
	kernelSum, err := fileSHA256(opts.KernelPath)
	if err != nil {
		return TinyArtifacts{}, fmt.Errorf("image: tiny: kernel (run as root? Debian's /boot/vmlinuz-* is mode 0600): %w", err)
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00%s\x00", tinyFormat, TinyCmdline, kernelSum)
	h.Write(initrd)
	man := tinyManifest{
		Format:      tinyFormat,
		Fingerprint: hex.EncodeToString(h.Sum(nil)),
		Kernel:      opts.KernelPath,
		Busybox:     opts.BusyboxPath,
		Cmdline:     TinyCmdline,
	}
	for _, m := range mods {
		man.Modules = append(man.Modules, m.Name)
	}
	if existingTinyMatches(outDir, man.Fingerprint) {
		log.InfoContext(ctx, "tiny image up to date", "dir", outDir)
		return art, nil
	}

	parent := filepath.Dir(outDir)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return TinyArtifacts{}, fmt.Errorf("image: tiny: %w", err)
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(outDir)+".tmp-")
	if err != nil {
		return TinyArtifacts{}, fmt.Errorf("image: tiny: %w", err)
	}
	done := false
	defer func() {
		if !done {
			os.RemoveAll(tmp)
		}
	}()
	if err := os.Chmod(tmp, 0o755); err != nil {
		return TinyArtifacts{}, fmt.Errorf("image: tiny: %w", err)
	}
	if err := copyFile(opts.KernelPath, filepath.Join(tmp, TinyKernelFile), 0o644); err != nil {
		return TinyArtifacts{}, fmt.Errorf("image: tiny: copy kernel: %w", err)
	}
	if err := writeFileSync(filepath.Join(tmp, TinyInitrdFile), initrd, 0o644); err != nil {
		return TinyArtifacts{}, fmt.Errorf("image: tiny: write initramfs: %w", err)
	}
	if err := qemuImg(ctx, "create", "-q", "-f", "qcow2", filepath.Join(tmp, TinyDiskFile), tinyDiskSize); err != nil {
		return TinyArtifacts{}, fmt.Errorf("image: tiny: create base disk: %w", err)
	}
	if err := syncPath(filepath.Join(tmp, TinyDiskFile)); err != nil {
		return TinyArtifacts{}, fmt.Errorf("image: tiny: %w", err)
	}
	mj, err := json.MarshalIndent(man, "", "  ")
	if err != nil {
		return TinyArtifacts{}, fmt.Errorf("image: tiny: %w", err)
	}
	if err := writeFileSync(filepath.Join(tmp, tinyManifestFile), append(mj, '\n'), 0o644); err != nil {
		return TinyArtifacts{}, fmt.Errorf("image: tiny: write manifest: %w", err)
	}
	if err := syncPath(tmp); err != nil {
		return TinyArtifacts{}, fmt.Errorf("image: tiny: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return TinyArtifacts{}, fmt.Errorf("image: tiny: %w", err)
	}
	if err := replaceDir(tmp, outDir); err != nil {
		return TinyArtifacts{}, fmt.Errorf("image: tiny: %w", err)
	}
	done = true
	log.InfoContext(ctx, "built tiny image", "dir", outDir, "kernel", opts.KernelPath,
		"modules", len(mods), "initrd_bytes", len(initrd))
	return art, nil
}

// existingTinyMatches reports whether dir holds a complete tiny image with
// the given fingerprint.
func existingTinyMatches(dir, fingerprint string) bool {
	b, err := os.ReadFile(filepath.Join(dir, tinyManifestFile))
	if err != nil {
		return false
	}
	var m tinyManifest
	if json.Unmarshal(b, &m) != nil || m.Fingerprint != fingerprint {
		return false
	}
	for _, f := range []string{TinyKernelFile, TinyInitrdFile, TinyDiskFile} {
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || !st.Mode().IsRegular() {
			return false
		}
	}
	return true
}

// replaceDir moves the finished directory tmp to dst, replacing an older dst.
// A crash between the two renames leaves the old image under a ".old-" name
// and no dst; it never leaves a partial dst.
func replaceDir(tmp, dst string) error {
	err := os.Rename(tmp, dst)
	if err == nil {
		return syncPath(filepath.Dir(dst))
	}
	if !errors.Is(err, syscall.ENOTEMPTY) && !errors.Is(err, syscall.EEXIST) {
		return fmt.Errorf("rename %s: %w", tmp, err)
	}
	old, err := os.MkdirTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".old-")
	if err != nil {
		return err
	}
	// MkdirTemp only reserved a unique name; os.Rename will not replace a
	// directory, so free the name first.
	if err := os.Remove(old); err != nil {
		return err
	}
	if err := os.Rename(dst, old); err != nil {
		return fmt.Errorf("move old image aside: %w", err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		_ = os.Rename(old, dst)
		return fmt.Errorf("rename %s: %w", tmp, err)
	}
	if err := syncPath(filepath.Dir(dst)); err != nil {
		return err
	}
	_ = os.RemoveAll(old) // best effort: the new image is in place
	return nil
}

// buildInitramfs returns the gzip'd newc archive of the tiny guest.
func buildInitramfs(busybox string, mods []kmod) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	cw := newCPIOWriter(zw)
	for _, d := range []string{
		"bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys",
		"run", "tmp", "etc", "etc/shoal", "lib", "lib/modules", "root",
		"var", "var/log", "mnt", "www", "www/cgi-bin",
		"www/disks", "www/vol", // served by disks.cgi, through index.cgi
	} {
		perm := fs.FileMode(0o755)
		if d == "tmp" {
			perm = 0o777 | fs.ModeSticky
		}
		if err := cw.Dir(d, perm); err != nil {
			return nil, err
		}
	}
	// The kernel opens /dev/console for init before devtmpfs is mounted.
	if err := cw.CharDev("dev/console", 0o600, 5, 1); err != nil {
		return nil, err
	}
	if err := cw.CharDev("dev/null", 0o666, 1, 3); err != nil {
		return nil, err
	}
	bb, err := os.ReadFile(busybox)
	if err != nil {
		return nil, fmt.Errorf("read busybox: %w", err)
	}
	if !bytes.HasPrefix(bb, []byte("\x7fELF")) {
		return nil, fmt.Errorf("%s is not an ELF binary: %w", busybox, fs.ErrInvalid)
	}
	files := []struct {
		name string
		perm fs.FileMode
		data []byte
	}{
		{"bin/busybox", 0o755, bb},
		{"etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\n")},
		{"etc/group", 0o644, []byte("root:x:0:\n")},
		{"etc/hostname", 0o644, []byte("shoal-tiny\n")},
	}
	for _, g := range []struct {
		src, dst string
		perm     fs.FileMode
	}{
		{"guest/init.sh", "init", 0o755},
		{"guest/lib.sh", "etc/shoal/lib.sh", 0o644},
		{"guest/index.cgi", "www/cgi-bin/index.cgi", 0o755},
		{"guest/disks.cgi", "etc/shoal/disks.cgi", 0o755},
		{"guest/profile.sh", "etc/profile", 0o644},
		{"guest/udhcpc.sh", "etc/shoal/udhcpc.sh", 0o755},
		{"guest/disklog.sh", "etc/shoal/disklog.sh", 0o755},
	} {
		data, err := guestFS.ReadFile(g.src)
		if err != nil {
			return nil, err
		}
		files = append(files, struct {
			name string
			perm fs.FileMode
			data []byte
		}{g.dst, g.perm, data})
	}
	for _, f := range files {
		if err := cw.File(f.name, f.perm, f.data); err != nil {
			return nil, err
		}
	}
	if err := cw.Symlink("bin/sh", "busybox"); err != nil {
		return nil, err
	}
	var order strings.Builder
	for _, m := range mods {
		data, err := readModule(m.Path)
		if err != nil {
			return nil, err
		}
		if err := cw.File("lib/modules/"+m.Name+".ko", 0o644, data); err != nil {
			return nil, err
		}
		order.WriteString(m.Name + "\n")
	}
	if err := cw.File("etc/shoal/modules", 0o644, []byte(order.String())); err != nil {
		return nil, err
	}
	if err := cw.Close(); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("gzip initramfs: %w", err)
	}
	return buf.Bytes(), nil
}

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func copyFile(src, dst string, perm fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func writeFileSync(p string, data []byte, perm fs.FileMode) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// syncPath fsyncs a file or directory.
func syncPath(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", p, err)
	}
	return nil
}

// qemuImg runs qemu-img with args and returns its stderr in the error.
func qemuImg(ctx context.Context, args ...string) error {
	_, err := qemuImgOutput(ctx, args...)
	return err
}

func qemuImgOutput(ctx context.Context, args ...string) ([]byte, error) {
	bin, err := exec.LookPath("qemu-img")
	if err != nil {
		return nil, fmt.Errorf("qemu-img not found (apt-get install qemu-utils): %w", err)
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = "no output"
		}
		return out, fmt.Errorf("qemu-img %s: %s: %w", args[0], msg, err)
	}
	return out, nil
}
