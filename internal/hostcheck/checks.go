package hostcheck

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// versionTimeout bounds each `--version` run.
const versionTimeout = 10 * time.Second

// capNetAdmin is the bit number of CAP_NET_ADMIN in /proc/self/status CapEff.
const capNetAdmin = 12

func ok(name, detail string) Check { return Check{Name: name, OK: true, Detail: detail} }

func warn(name, detail, fix string) Check {
	return Check{Name: name, Warn: true, Detail: detail, Fix: fix}
}

func fail(name, detail, fix string) Check { return Check{Name: name, Detail: detail, Fix: fix} }

// toolVersion finds tool and returns the first line of `tool --version`,
// without a trailing "(Debian ...)"-style build note.
func toolVersion(ctx context.Context, env Env, tool string) (path, version string, err error) {
	path, err = env.LookPath(tool)
	if err != nil {
		return "", "", fmt.Errorf("not found in PATH: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, versionTimeout)
	defer cancel()
	out, err := env.Output(ctx, path, "--version")
	if err != nil {
		return path, "", fmt.Errorf("%s --version failed: %w: %s", path, err, firstLine(out))
	}
	version = firstLine(out)
	if i := strings.Index(version, " ("); i > 0 {
		version = version[:i]
	}
	if version == "" {
		version = "version unknown"
	}
	return path, version, nil
}

func firstLine(b []byte) string {
	s := strings.TrimSpace(string(b))
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return strings.TrimSpace(s)
}

func checkQEMU(ctx context.Context, env Env, qemu string) Check {
	name := filepath.Base(qemu)
	fix := "apt-get install qemu-system-x86"
	path, v, err := toolVersion(ctx, env, qemu)
	switch {
	case path == "" && strings.Contains(qemu, "/"):
		return fail(name, "not found at "+qemu, fix)
	case path == "":
		return fail(name, "not found in PATH", fix)
	case err != nil:
		return fail(name, err.Error(), "reinstall it: apt-get install --reinstall qemu-system-x86")
	}
	return ok(name, v)
}

func checkQEMUImg(ctx context.Context, env Env) Check {
	const name = "qemu-img"
	path, v, err := toolVersion(ctx, env, name)
	switch {
	case path == "":
		return fail(name, "not found in PATH", "apt-get install qemu-utils")
	case err != nil:
		return fail(name, err.Error(), "reinstall it: apt-get install --reinstall qemu-utils")
	}
	return ok(name, v)
}

func checkGenisoimage(env Env) Check {
	const name = "genisoimage"
	path, err := env.LookPath(name)
	if err != nil {
		return fail(name, "not found in PATH (needed for cloud-init seed disks)", "apt-get install genisoimage")
	}
	return ok(name, path)
}

func checkKVM(env Env) Check {
	const name, dev = "kvm", "/dev/kvm"
	if _, err := env.Stat(dev); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return warn(name, dev+" not present; TCG software emulation will be used (slow)",
				"enable VT-x/AMD-V in the firmware (or nested virtualization on the outer hypervisor) and modprobe kvm_intel or kvm_amd")
		}
		return warn(name, fmt.Sprintf("cannot stat %s: %v; TCG software emulation will be used", dev, err), "check "+dev)
	}
	if err := env.OpenRW(dev); err != nil {
		return warn(name, fmt.Sprintf("%s present but cannot be opened (%v); TCG software emulation will be used", dev, err),
			"run as root or add the user to the kvm group")
	}
	return ok(name, dev+" usable")
}

func checkAccel(accel, reason string) Check {
	const name = "accel"
	switch accel {
	case "tcg":
		d := "tcg software emulation"
		if reason != "" {
			d += ": " + reason
		}
		return warn(name, d, "VMs will run several times slower; see the kvm check")
	case "kvm":
		return ok(name, "kvm")
	}
	d := accel
	if reason != "" {
		d += ": " + reason
	}
	return ok(name, d)
}

func checkBridge(env Env) Check {
	const name = "bridge"
	if _, err := env.Stat("/sys/module/bridge"); err == nil {
		return ok(name, "bridge module loaded")
	}
	if mods, err := env.ReadFile("/proc/modules"); err == nil && hasLinePrefix(mods, "bridge ") {
		return ok(name, "bridge module loaded")
	}
	rel, err := env.ReadFile("/proc/sys/kernel/osrelease")
	if err == nil {
		dir := filepath.Join("/lib/modules", strings.TrimSpace(string(rel)))
		if _, err := env.Stat(filepath.Join(dir, "kernel/net/bridge")); err == nil {
			return ok(name, "bridge module available (loads on first use)")
		}
		if b, err := env.ReadFile(filepath.Join(dir, "modules.builtin")); err == nil && bytes.Contains(b, []byte("net/bridge/bridge.ko")) {
			return ok(name, "bridge support built into the kernel")
		}
	}
	return warn(name, "could not confirm Linux bridge support (no loaded, installed or built-in bridge module found)",
		"modprobe bridge; if that fails, install the kernel's modules (linux-image-$(uname -r))")
}

func hasLinePrefix(b []byte, prefix string) bool {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), prefix) {
			return true
		}
	}
	return false
}

func checkTun(env Env) Check {
	const name, dev = "tun", "/dev/net/tun"
	if _, err := env.Stat(dev); err != nil {
		return fail(name, fmt.Sprintf("%s not present: %v", dev, err),
			"modprobe tun (in a container: pass the device through, or mknod /dev/net/tun c 10 200)")
	}
	if err := env.OpenRW(dev); err != nil {
		return fail(name, fmt.Sprintf("cannot open %s: %v", dev, err), "run as root (or with CAP_NET_ADMIN)")
	}
	return ok(name, dev+" usable")
}

func checkPrivileges(env Env) Check {
	const name = "privileges"
	fix := "run as root (sudo), or grant CAP_NET_ADMIN"
	euid := env.Geteuid()
	who := "root"
	if euid != 0 {
		who = fmt.Sprintf("uid %d", euid)
	}
	capEff, err := readCapEff(env)
	if err != nil {
		// Cannot see capabilities; trust the uid.
		if euid == 0 {
			return ok(name, "running as root")
		}
		return fail(name, fmt.Sprintf("running as %s and cannot read capabilities: %v", who, err), fix)
	}
	if capEff&(1<<capNetAdmin) == 0 {
		return fail(name, fmt.Sprintf("running as %s without CAP_NET_ADMIN (needed for bridges and taps)", who), fix)
	}
	if euid == 0 {
		return ok(name, "running as root")
	}
	return ok(name, fmt.Sprintf("running as %s with CAP_NET_ADMIN", who))
}

func readCapEff(env Env) (uint64, error) {
	b, err := env.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if v, found := strings.CutPrefix(sc.Text(), "CapEff:"); found {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return 0, fmt.Errorf("parse CapEff %q: %w", v, err)
			}
			return n, nil
		}
	}
	return 0, errors.New("no CapEff line in /proc/self/status")
}

func checkMemory(env Env, minMiB int64) Check {
	const name = "memory"
	b, err := env.ReadFile("/proc/meminfo")
	if err != nil {
		return warn(name, fmt.Sprintf("cannot read /proc/meminfo: %v", err), "check that /proc is mounted")
	}
	kib, found := meminfoKiB(b, "MemAvailable")
	if !found {
		return warn(name, "no MemAvailable in /proc/meminfo (kernel older than 3.14?)", "upgrade the kernel")
	}
	avail := kib / 1024
	if avail < minMiB {
		return fail(name, fmt.Sprintf("%d MiB available, need at least %d MiB", avail, minMiB),
			"free memory (stop other VMs or programs) or give this host more RAM")
	}
	if minMiB > 0 {
		return ok(name, fmt.Sprintf("%d MiB available (minimum %d MiB)", avail, minMiB))
	}
	return ok(name, fmt.Sprintf("%d MiB available", avail))
}

// meminfoKiB returns the value of a "Key:   123 kB" line.
func meminfoKiB(b []byte, key string) (int64, bool) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		v, found := strings.CutPrefix(sc.Text(), key+":")
		if !found {
			continue
		}
		fields := strings.Fields(v)
		if len(fields) == 0 {
			return 0, false
		}
		n, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			return 0, false
		}
		return n, true
	}
	return 0, false
}

func checkDisk(env Env, dataDir string, minMiB int64) Check {
	const name = "disk"
	dir, err := nearestExisting(env, dataDir)
	if err != nil {
		return warn(name, fmt.Sprintf("cannot find %s or any parent: %v", dataDir, err), "check --data-dir")
	}
	free, err := env.FreeDisk(dir)
	if err != nil {
		return warn(name, fmt.Sprintf("cannot measure free space at %s: %v", dir, err), "check --data-dir")
	}
	mib := int64(free / (1 << 20))
	where := dataDir
	if dir != dataDir {
		where = fmt.Sprintf("%s (not created yet; measured at %s)", dataDir, dir)
	}
	if mib < minMiB {
		return fail(name, fmt.Sprintf("%d MiB free at %s, need at least %d MiB", mib, where, minMiB),
			"free disk space or choose another --data-dir")
	}
	return ok(name, fmt.Sprintf("%d MiB free at %s", mib, where))
}

// nearestExisting returns dir or its closest existing ancestor.
func nearestExisting(env Env, dir string) (string, error) {
	d := filepath.Clean(dir)
	if !filepath.IsAbs(d) {
		if abs, err := filepath.Abs(d); err == nil {
			d = abs
		}
	}
	for {
		if _, err := env.Stat(d); err == nil {
			return d, nil
		} else if !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", fmt.Errorf("%s: %w", dir, fs.ErrNotExist)
		}
		d = parent
	}
}
