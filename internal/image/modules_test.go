package image

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// fakeModules writes a modules dir with the given modules.dep lines and
// an empty .ko file for every module named in it.
func fakeModules(t *testing.T, dep, builtin string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte(builtin), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, f := range strings.Fields(strings.ReplaceAll(dep, ":", " ")) {
		p := filepath.Join(dir, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("\x7fELF "+f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func names(mods []kmod) []string {
	var out []string
	for _, m := range mods {
		out = append(out, m.Name)
	}
	return out
}

func TestResolveModulesOrder(t *testing.T) {
	dep := "kernel/a/virtio_pci.ko: kernel/a/virtio_pci-legacy-dev.ko kernel/a/virtio.ko kernel/a/virtio_ring.ko\n" +
		"kernel/a/virtio.ko: kernel/a/virtio_ring.ko\n" +
		"kernel/a/virtio_ring.ko:\n" +
		"kernel/a/virtio_pci-legacy-dev.ko:\n" +
		"kernel/n/virtio_net.ko: kernel/n/net_failover.ko kernel/n/failover.ko kernel/a/virtio.ko kernel/a/virtio_ring.ko\n" +
		"kernel/n/net_failover.ko: kernel/n/failover.ko\n" +
		"kernel/n/failover.ko:\n"
	dir := fakeModules(t, dep, "kernel/drivers/input/evdev.ko\n")
	mods, err := resolveModules(dir, []string{"virtio_net", "virtio-pci", "evdev"})
	if err != nil {
		t.Fatal(err)
	}
	got := names(mods)
	want := []string{"failover", "net_failover", "virtio_ring", "virtio", "virtio_net", "virtio_pci_legacy_dev", "virtio_pci"}
	if !slices.Equal(got, want) {
		t.Errorf("order %v, want %v", got, want)
	}
	if mods[0].Path != filepath.Join(dir, "kernel/n/failover.ko") {
		t.Errorf("path %s", mods[0].Path)
	}
}

func TestResolveModulesErrors(t *testing.T) {
	dir := fakeModules(t, "kernel/a.ko: kernel/b.ko\nkernel/b.ko: kernel/a.ko\nkernel/c.ko: kernel/gone.ko\n", "")
	for _, tc := range []struct{ mod, want string }{
		{"a", "cycle"},
		{"c", "gone (needed by c)"},
		{"nope", "neither"},
	} {
		_, err := resolveModules(dir, []string{tc.mod})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("resolve %s: %v, want error containing %q", tc.mod, err, tc.want)
		}
	}
	if _, err := resolveModules(t.TempDir(), []string{"x"}); err == nil || !strings.Contains(err.Error(), "modules.dep") {
		t.Errorf("missing modules.dep: %v", err)
	}
}

// TestResolveModulesHostKernel checks the real module set against the
// installed cloud kernel: every dependency precedes its users.
func TestResolveModulesHostKernel(t *testing.T) {
	_, modDir, err := FindCloudKernel()
	if err != nil {
		requireIntegration(t)
	}
	mods, err := resolveModules(modDir, tinyModules)
	if err != nil {
		t.Fatal(err)
	}
	got := names(mods)
	pos := map[string]int{}
	for i, n := range got {
		pos[n] = i
	}
	for _, pair := range [][2]string{
		{"virtio_ring", "virtio"}, {"virtio", "virtio_pci"}, {"virtio_pci_modern_dev", "virtio_pci"},
		{"failover", "net_failover"}, {"net_failover", "virtio_net"}, {"cdrom", "isofs"},
		{"pvpanic", "pvpanic_mmio"},
	} {
		a, okA := pos[pair[0]]
		b, okB := pos[pair[1]]
		if okA && okB && a > b {
			t.Errorf("%s loads after %s: %v", pair[0], pair[1], got)
		}
	}
	for _, m := range mods {
		if _, err := readModule(m.Path); err != nil {
			t.Error(err)
		}
	}
}

func TestModuleName(t *testing.T) {
	for in, want := range map[string]string{
		"kernel/drivers/net/virtio_net.ko":    "virtio_net",
		"kernel/drivers/net/virtio_net.ko.xz": "virtio_net",
		"kernel/x/crc-itu-t.ko":               "crc_itu_t",
		"virtio-pci":                          "virtio_pci",
	} {
		if got := moduleName(in); got != want {
			t.Errorf("moduleName(%q) = %q, want %q", in, got, want)
		}
	}
}
