package image

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// tinyModules are the kernel modules the tiny guest needs; their
// dependencies are added from modules.dep. A module that the kernel has
// built in (modules.builtin) is skipped.
var tinyModules = []string{
	"virtio_pci", // virtio_ring, virtio, virtio_pci_{legacy,modern}_dev
	"virtio_blk",
	"virtio_net",   // failover, net_failover
	"isofs",        // cdrom; for the cidata seed
	"button",       // ACPI power button (QMP system_powerdown)
	"evdev",        // /dev/input/event* for the power button
	"pvpanic_mmio", // pvpanic (ACPI QEMU0001): a kernel panic ends QEMU, so the host sees a crash
}

// kmod is one module to put into the initramfs.
type kmod struct {
	Name string // canonical module name (dashes folded to underscores)
	Path string // absolute path on the host
}

// moduleName returns the canonical module name of a modules.dep path such as
// "kernel/drivers/net/virtio_net.ko.xz".
func moduleName(p string) string {
	base := path.Base(p)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}

// resolveModules returns the modules needed for names, dependencies first,
// read from modulesDir/modules.dep. Built-in modules are left out.
func resolveModules(modulesDir string, names []string) ([]kmod, error) {
	depFile := filepath.Join(modulesDir, "modules.dep")
	f, err := os.Open(depFile)
	if err != nil {
		return nil, fmt.Errorf("open %s (is the kernel's modules package installed?): %w", depFile, err)
	}
	defer f.Close()
	paths := map[string]string{}  // name -> relative path
	deps := map[string][]string{} // name -> dependency names
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		mod, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		n := moduleName(mod)
		paths[n] = mod
		for _, d := range strings.Fields(rest) {
			deps[n] = append(deps[n], moduleName(d))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", depFile, err)
	}
	builtin := map[string]bool{}
	if b, err := os.ReadFile(filepath.Join(modulesDir, "modules.builtin")); err == nil {
		for _, l := range strings.Fields(string(b)) {
			builtin[moduleName(l)] = true
		}
	}

	var order []kmod
	state := map[string]int{} // 1 = visiting, 2 = done
	var visit func(n, from string) error
	visit = func(n, from string) error {
		switch state[n] {
		case 1:
			return fmt.Errorf("module dependency cycle at %s", n)
		case 2:
			return nil
		}
		rel, ok := paths[n]
		if !ok {
			if builtin[n] {
				state[n] = 2
				return nil
			}
			if from != "" {
				return fmt.Errorf("module %s (needed by %s) is not in %s", n, from, depFile)
			}
			return fmt.Errorf("module %s is neither in %s nor built into the kernel", n, depFile)
		}
		state[n] = 1
		for _, d := range deps[n] {
			if err := visit(d, n); err != nil {
				return err
			}
		}
		state[n] = 2
		p := rel
		if !filepath.IsAbs(p) {
			p = filepath.Join(modulesDir, rel)
		}
		order = append(order, kmod{Name: n, Path: p})
		return nil
	}
	for _, n := range names {
		if err := visit(moduleName(n), ""); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// readModule returns the uncompressed object of a module. Busybox insmod
// loads plain ELF objects, so gzip'd modules are inflated here; other
// compressions are rejected with a hint.
func readModule(p string) ([]byte, error) {
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("read module: %w", err)
	}
	switch {
	case strings.HasSuffix(p, ".ko"):
		return data, nil
	case strings.HasSuffix(p, ".ko.gz"):
		zr, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			return nil, fmt.Errorf("inflate %s: %w", p, err)
		}
		out, err := io.ReadAll(zr)
		if err != nil {
			return nil, fmt.Errorf("inflate %s: %w", p, err)
		}
		return out, nil
	default:
		return nil, fmt.Errorf("module %s: only .ko and .ko.gz modules are supported: %w", p, errors.ErrUnsupported)
	}
}
