package image

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoalvm/shoal/internal/cloudinit"
)

// guestShell runs a function of guest/lib.sh under the host's busybox sh,
// the same shell and applets the guest uses.
func guestShell(t *testing.T, script string, files map[string][]byte) string {
	t.Helper()
	requireIntegration(t, "busybox")
	dir := t.TempDir()
	lib, err := guestFS.ReadFile("guest/lib.sh")
	if err != nil {
		t.Fatal(err)
	}
	files["lib.sh"] = lib
	for n, b := range files {
		if err := os.WriteFile(filepath.Join(dir, n), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("busybox", "sh", "-c", ". ./lib.sh; "+script)
	cmd.Dir = dir
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out)
	}
	return string(out)
}

func TestGuestParsesNetworkConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  []byte
		want string
	}{
		{
			name: "full seed",
			cfg: cloudinit.NetworkConfig(cloudinit.Seed{
				MAC: "52:54:00:AB:00:0A", Address: "10.57.0.10/24", Gateway: "10.57.0.1",
				DNS: []string{"10.57.0.1", "192.0.2.53"},
			}),
			want: "mac 52:54:00:ab:00:0a\nname eth0\naddr 10.57.0.10/24\ngw 10.57.0.1\ndns 10.57.0.1\ndns 192.0.2.53\n",
		},
		{
			name: "no gateway or dns",
			cfg:  cloudinit.NetworkConfig(cloudinit.Seed{MAC: "52:54:00:00:00:01", Address: "10.0.0.2/16"}),
			want: "mac 52:54:00:00:00:01\nname eth0\naddr 10.0.0.2/16\n",
		},
		{
			name: "dhcp",
			cfg:  cloudinit.NetworkConfig(cloudinit.Seed{MAC: "52:54:00:00:00:02"}),
			want: "mac 52:54:00:00:00:02\nname eth0\n",
		},
		{
			name: "netplan wrapper, flow lists, comments, second NIC ignored",
			cfg: []byte(`# written by hand
network:
  version: 2
  ethernets:
    nic0:
      match:
        macaddress: '52:54:00:00:00:03'
      set-name: eth0  # rename
      addresses: [10.1.0.5/24, "10.1.1.5/24"]
      gateway4: 10.1.0.1
      nameservers:
        search: [example.com]
        addresses: [10.1.0.1]
    nic1:
      match:
        macaddress: "52:54:00:00:00:04"
      addresses:
        - 10.9.9.9/24
`),
			want: "mac 52:54:00:00:00:03\nname eth0\naddr 10.1.0.5/24\naddr 10.1.1.5/24\ngw 10.1.0.1\ndns 10.1.0.1\n",
		},
		{
			name: "shell metacharacters are dropped",
			cfg:  []byte("version: 2\nethernets:\n  eth0:\n    addresses:\n      - \"10.0.0.1/24; reboot\"\n    gateway4: $(reboot)\n"),
			want: "",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := guestShell(t, "parse_netcfg network-config", map[string][]byte{"network-config": tc.cfg})
			if got != tc.want {
				t.Errorf("config:\n%s\nparsed:\n%s\nwant:\n%s", tc.cfg, got, tc.want)
			}
		})
	}
}

func TestGuestParsesMetaData(t *testing.T) {
	md := cloudinit.MetaData(cloudinit.Seed{InstanceID: "i-0123", Hostname: "web-1.example"})
	got := guestShell(t, "yaml_get local-hostname meta-data; yaml_get instance-id meta-data",
		map[string][]byte{"meta-data": md})
	if got != "web-1.example\ni-0123\n" {
		t.Errorf("meta-data:\n%s\nparsed: %q", md, got)
	}
	quoted := []byte("instance-id: \"on\"\nlocal-hostname: 'vm1'\n")
	got = guestShell(t, "yaml_get local-hostname meta-data; yaml_get instance-id meta-data",
		map[string][]byte{"meta-data": quoted})
	if strings.TrimSpace(got) != "vm1\non" {
		t.Errorf("quoted meta-data parsed as %q", got)
	}
}
