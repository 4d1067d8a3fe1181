package qemu

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestArgs(t *testing.T) {
	base := func() Config {
		return Config{Name: "web1", Dir: "/var/lib/shoal/vms/web1", Accel: "tcg", CPUs: 2, MemoryMiB: 256}
	}
	common := []string{
		"-nodefaults", "-no-user-config", "-display", "none", "-machine", "q35",
		"-chardev", "socket,id=qmp,path=/var/lib/shoal/vms/web1/qmp.sock,server=on,wait=off",
		"-mon", "chardev=qmp,mode=control",
		"-chardev", "socket,id=ser0,path=/var/lib/shoal/vms/web1/console.sock,server=on,wait=off," +
			"logfile=/var/lib/shoal/vms/web1/console.log,logappend=on",
		"-serial", "chardev:ser0",
		"-pidfile", "/var/lib/shoal/vms/web1/qemu.pid", "-daemonize",
		"-D", "/var/lib/shoal/vms/web1/qemu.log",
		"-device pvpanic", "-action panic=exit-failure",
	}
	tests := []struct {
		name    string
		mod     func(*Config)
		want    []string // each "-flag value" pair (or lone flag) must appear
		notWant []string
	}{
		{
			name: "minimal tcg",
			want: append([]string{
				"-name guest=web1,process=shoal-web1,debug-threads=on",
				"-accel tcg", "-cpu max", "-smp 2", "-m 262152K", // 256 MiB + the pad that dodges QEMU 7.2's TCG dirty-tracking bug
			}, common...),
			notWant: []string{"-S", "-uuid", "-kernel", "-blockdev", "-netdev", "-initrd", "-append"},
		},
		{
			name: "kvm paused with uuid and kernel",
			mod: func(c *Config) {
				c.Accel = "kvm"
				c.Paused = true
				c.UUID = "6f1c2a7e-3b4d-4e5f-8a9b-0c1d2e3f4a5b"
				c.Kernel, c.Initrd, c.Cmdline = "/img/vmlinuz", "/img/initrd", "console=ttyS0 quiet"
			},
			want: []string{"-accel kvm", "-cpu host", "-m 256", "-S", "-uuid 6f1c2a7e-3b4d-4e5f-8a9b-0c1d2e3f4a5b",
				"-kernel /img/vmlinuz", "-initrd /img/initrd", "-append console=ttyS0 quiet"},
		},
		{
			name: "disks",
			mod: func(c *Config) {
				c.Disks = []Disk{
					{Path: "/pool/web1.qcow2", Format: "qcow2", Serial: "root-1"},
					{Path: "/pool/seed,1.img", ReadOnly: true},
				}
			},
			want: []string{
				`-blockdev {"driver":"qcow2","node-name":"disk0","read-only":false,"file":{"driver":"file","filename":"/pool/web1.qcow2","read-only":false}}`,
				"-device virtio-blk-pci,drive=disk0,id=virtio-disk0,serial=root-1,bootindex=1",
				`-blockdev {"driver":"raw","node-name":"disk1","read-only":true,"file":{"driver":"file","filename":"/pool/seed,1.img","read-only":true}}`,
				"-device virtio-blk-pci,drive=disk1,id=virtio-disk1",
			},
		},
		{
			name: "nics get fds 3, 4 in order",
			mod: func(c *Config) {
				c.NICs = []NIC{{MAC: "52:54:00:AA:BB:01"}, {MAC: "52:54:00:aa:bb:02", ID: "lan"}}
			},
			want: []string{
				"-netdev tap,id=net0,fd=3",
				"-device virtio-net-pci,netdev=net0,mac=52:54:00:aa:bb:01,id=net0-dev",
				"-netdev tap,id=lan,fd=4",
				"-device virtio-net-pci,netdev=lan,mac=52:54:00:aa:bb:02,id=lan-dev",
			},
		},
		{
			name: "commas escaped in name and dir",
			mod:  func(c *Config) { c.Name = "a,b"; c.Dir = "/tmp/x,y" },
			want: []string{
				"-name guest=a,,b,process=shoal-a,,b,debug-threads=on",
				"-chardev socket,id=qmp,path=/tmp/x,,y/qmp.sock,server=on,wait=off",
				"-pidfile /tmp/x,y/qemu.pid",
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := base()
			if tc.mod != nil {
				tc.mod(&cfg)
			}
			args, err := Args(cfg)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !hasArg(args, w) {
					t.Errorf("missing %q in\n%s", w, strings.Join(args, "\n"))
				}
			}
			for _, nw := range tc.notWant {
				if slices.Contains(args, nw) {
					t.Errorf("unexpected %q", nw)
				}
			}
		})
	}
}

// hasArg reports whether want ("-flag" or "-flag value") appears in args.
func hasArg(args []string, want string) bool {
	flag, val, pair := strings.Cut(want, " ")
	for i, a := range args {
		if a != flag {
			continue
		}
		if !pair || (i+1 < len(args) && args[i+1] == val) {
			return true
		}
	}
	return false
}

func TestArgsDoesNotChangeInput(t *testing.T) {
	cfg := Config{Name: "n", Dir: "/tmp/d", Accel: "tcg", CPUs: 1, MemoryMiB: 64,
		Disks: []Disk{{Path: "/d.img"}}, NICs: []NIC{{MAC: "52:54:00:00:00:01"}}}
	if _, err := Args(cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Disks[0].Format != "" || cfg.NICs[0].ID != "" {
		t.Errorf("Args filled defaults into the caller's slices: %+v %+v", cfg.Disks, cfg.NICs)
	}
}

func TestArgsErrors(t *testing.T) {
	long := "/tmp/" + strings.Repeat("d", MaxDirLen)
	tests := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"no name", func(c *Config) { c.Name = "" }, "name is empty"},
		{"control char in name", func(c *Config) { c.Name = "a\nb" }, "control characters"},
		{"bad uuid", func(c *Config) { c.UUID = "nope" }, "uuid"},
		{"relative dir", func(c *Config) { c.Dir = "vms/a" }, "not an absolute path"},
		{"unclean dir", func(c *Config) { c.Dir = "/tmp/a/../b" }, "not clean"},
		{"dir too long", func(c *Config) { c.Dir = long }, "unix socket paths allow at most"},
		{"no accel", func(c *Config) { c.Accel = "" }, `accel ""`},
		{"bad accel", func(c *Config) { c.Accel = "hvf" }, `accel "hvf"`},
		{"no cpus", func(c *Config) { c.CPUs = 0 }, "cpus 0"},
		{"tiny memory", func(c *Config) { c.MemoryMiB = 8 }, "memory 8 MiB"},
		{"initrd without kernel", func(c *Config) { c.Initrd = "/i" }, "without a kernel"},
		{"relative disk", func(c *Config) { c.Disks = []Disk{{Path: "d.img"}} }, "disk 0: path"},
		{"bad format", func(c *Config) { c.Disks = []Disk{{Path: "/d", Format: "raw,x"}} }, "format"},
		{"bad serial", func(c *Config) { c.Disks = []Disk{{Path: "/d", Serial: "a,b"}} }, "serial"},
		{"long serial", func(c *Config) { c.Disks = []Disk{{Path: "/d", Serial: strings.Repeat("s", 21)}} }, "serial"},
		{"bad mac", func(c *Config) { c.NICs = []NIC{{MAC: "zz"}} }, "MAC"},
		{"multicast mac", func(c *Config) { c.NICs = []NIC{{MAC: "01:00:5e:00:00:01"}} }, "multicast"},
		{"bad nic id", func(c *Config) { c.NICs = []NIC{{MAC: "52:54:00:00:00:01", ID: "a,b"}} }, "id"},
		{"dup nic id", func(c *Config) {
			c.NICs = []NIC{{MAC: "52:54:00:00:00:01", ID: "x"}, {MAC: "52:54:00:00:00:02", ID: "x"}}
		}, "used twice"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{Name: "vm", Dir: "/tmp/vm", Accel: "tcg", CPUs: 1, MemoryMiB: 64}
			tc.mod(&cfg)
			_, err := Args(cfg)
			if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want ErrInvalidConfig mentioning %q", err, tc.want)
			}
		})
	}
}

func TestMaxDirLen(t *testing.T) {
	dir := "/" + strings.Repeat("d", MaxDirLen-1)
	if _, err := Args(Config{Name: "v", Dir: dir, Accel: "tcg", CPUs: 1, MemoryMiB: 64}); err != nil {
		t.Fatalf("dir of exactly MaxDirLen rejected: %v", err)
	}
	if n := len(dir + "/" + ConsoleSocket); n > maxSocketPath {
		t.Fatalf("longest socket path is %d bytes", n)
	}
}

func TestArgsCPUModel(t *testing.T) {
	tests := []struct{ accel, model, want string }{
		{"kvm", "", "host"},
		{"tcg", "", "max"},
		{"kvm", "host", "host"},
		{"tcg", "host", "max"},
		{"kvm", "Nehalem", "Nehalem"},
		{"tcg", "Nehalem", "Nehalem"},
	}
	for _, tc := range tests {
		a, err := Args(Config{Name: "v", Dir: "/tmp/x", Accel: tc.accel, CPUs: 1, MemoryMiB: 64, CPUModel: tc.model})
		if err != nil {
			t.Fatal(err)
		}
		for i := range a {
			if a[i] == "-cpu" && a[i+1] != tc.want {
				t.Errorf("accel %s model %q: -cpu %s, want %s", tc.accel, tc.model, a[i+1], tc.want)
			}
		}
	}
}
