package hostcheck

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"testing"
	"time"
)

// fakeMachine describes a simulated host; env() turns it into an Env that
// never touches the real machine.
type fakeMachine struct {
	bins      map[string]string // name -> --version output ("" = present, no output)
	brokenBin map[string]bool   // --version fails
	files     map[string]string // path -> contents (existence for Stat, too)
	noOpen    map[string]bool   // present but OpenRW fails
	euid      int
	freeDisk  map[string]uint64
}

type fakeInfo struct{ name string }

func (f fakeInfo) Name() string       { return f.name }
func (f fakeInfo) Size() int64        { return 0 }
func (f fakeInfo) Mode() fs.FileMode  { return 0o644 }
func (f fakeInfo) ModTime() time.Time { return time.Time{} }
func (f fakeInfo) IsDir() bool        { return false }
func (f fakeInfo) Sys() any           { return nil }

func (m fakeMachine) env() Env {
	return Env{
		LookPath: func(file string) (string, error) {
			if _, ok := m.bins[file]; ok {
				if strings.Contains(file, "/") {
					return file, nil
				}
				return "/usr/bin/" + file, nil
			}
			return "", fmt.Errorf("exec: %q: %w", file, fs.ErrNotExist)
		},
		Output: func(ctx context.Context, name string, args ...string) ([]byte, error) {
			base := strings.TrimPrefix(name, "/usr/bin/")
			if m.brokenBin[base] {
				return []byte("error while loading shared libraries: libfoo.so\n"), errors.New("exit status 127")
			}
			return []byte(m.bins[base]), nil
		},
		Stat: func(path string) (fs.FileInfo, error) {
			if _, ok := m.files[path]; ok {
				return fakeInfo{path}, nil
			}
			return nil, &fs.PathError{Op: "stat", Path: path, Err: fs.ErrNotExist}
		},
		OpenRW: func(path string) error {
			if _, ok := m.files[path]; !ok {
				return &fs.PathError{Op: "open", Path: path, Err: fs.ErrNotExist}
			}
			if m.noOpen[path] {
				return &fs.PathError{Op: "open", Path: path, Err: fs.ErrPermission}
			}
			return nil
		},
		ReadFile: func(path string) ([]byte, error) {
			if c, ok := m.files[path]; ok {
				return []byte(c), nil
			}
			return nil, &fs.PathError{Op: "open", Path: path, Err: fs.ErrNotExist}
		},
		Geteuid: func() int { return m.euid },
		FreeDisk: func(path string) (uint64, error) {
			if n, ok := m.freeDisk[path]; ok {
				return n, nil
			}
			return 0, &fs.PathError{Op: "statfs", Path: path, Err: fs.ErrNotExist}
		},
	}
}

const (
	capAll        = "CapEff:\t000001ffffffffff\n"
	capNone       = "CapEff:\t0000000000000000\n"
	capOnlyNetAdm = "CapEff:\t0000000000001000\n"
)

// goodMachine is a fully ready host: 8 GiB available, 100 GiB free at /var/lib.
func goodMachine() fakeMachine {
	return fakeMachine{
		bins: map[string]string{
			"qemu-system-x86_64": "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright (c) 2003-2022 Fabrice Bellard\n",
			"qemu-img":           "qemu-img version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright\n",
			"genisoimage":        "",
		},
		files: map[string]string{
			"/dev/kvm":           "",
			"/dev/net/tun":       "",
			"/sys/module/bridge": "",
			"/proc/self/status":  "Name:\tshoal\nCapInh:\t0000000000000000\n" + capAll,
			"/proc/meminfo":      "MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    8388608 kB\n",
			"/var/lib":           "",
		},
		euid:     0,
		freeDisk: map[string]uint64{"/var/lib": 100 << 30},
	}
}

func TestRunWith(t *testing.T) {
	baseOpts := Options{DataDir: "/var/lib/shoal", MinFreeMemMiB: 1024, MinFreeDiskMiB: 4096}
	tests := []struct {
		name     string
		mutate   func(m *fakeMachine)
		opts     func(o *Options)
		check    string // check to inspect
		status   string // ok, WARN, FAIL
		detail   string // substring of Detail
		fix      string // substring of Fix
		reportOK bool
	}{
		{name: "all good qemu", check: "qemu-system-x86_64", status: "ok", detail: "QEMU emulator version 7.2.22", reportOK: true},
		{name: "all good qemu-img", check: "qemu-img", status: "ok", detail: "qemu-img version 7.2.22", reportOK: true},
		{name: "all good disk", check: "disk", status: "ok", detail: "102400 MiB free at /var/lib/shoal (not created yet; measured at /var/lib)", reportOK: true},
		{name: "all good memory", check: "memory", status: "ok", detail: "8192 MiB available (minimum 1024 MiB)", reportOK: true},
		{name: "all good privileges", check: "privileges", status: "ok", detail: "running as root", reportOK: true},
		{name: "all good bridge", check: "bridge", status: "ok", detail: "loaded", reportOK: true},
		{name: "all good kvm", check: "kvm", status: "ok", detail: "/dev/kvm usable", reportOK: true},
		{name: "all good tun", check: "tun", status: "ok", reportOK: true},
		{name: "all good genisoimage", check: "genisoimage", status: "ok", detail: "/usr/bin/genisoimage", reportOK: true},
		{
			name:   "missing qemu",
			mutate: func(m *fakeMachine) { delete(m.bins, "qemu-system-x86_64") },
			check:  "qemu-system-x86_64", status: "FAIL", detail: "not found", fix: "apt-get install qemu-system-x86",
		},
		{
			name:   "broken qemu",
			mutate: func(m *fakeMachine) { m.brokenBin = map[string]bool{"qemu-system-x86_64": true} },
			check:  "qemu-system-x86_64", status: "FAIL", detail: "--version failed", fix: "--reinstall",
		},
		{
			name:  "custom qemu path missing",
			opts:  func(o *Options) { o.QEMU = "/opt/qemu/bin/qemu-system-x86_64" },
			check: "qemu-system-x86_64", status: "FAIL", detail: "not found at /opt/qemu/bin/qemu-system-x86_64",
		},
		{
			name:   "missing qemu-img",
			mutate: func(m *fakeMachine) { delete(m.bins, "qemu-img") },
			check:  "qemu-img", status: "FAIL", detail: "not found", fix: "apt-get install qemu-utils",
		},
		{
			name:   "missing genisoimage",
			mutate: func(m *fakeMachine) { delete(m.bins, "genisoimage") },
			check:  "genisoimage", status: "FAIL", detail: "cloud-init", fix: "apt-get install genisoimage",
		},
		{
			name:   "no kvm is a warning",
			mutate: func(m *fakeMachine) { delete(m.files, "/dev/kvm") },
			check:  "kvm", status: "WARN", detail: "TCG software emulation will be used", fix: "kvm_intel",
			reportOK: true,
		},
		{
			name:   "kvm not openable is a warning",
			mutate: func(m *fakeMachine) { m.noOpen = map[string]bool{"/dev/kvm": true} },
			check:  "kvm", status: "WARN", detail: "cannot be opened", fix: "kvm group",
			reportOK: true,
		},
		{
			name:  "accel tcg warns with reason",
			opts:  func(o *Options) { o.Accel, o.AccelReason = "tcg", "KVM_CREATE_VM failed" },
			check: "accel", status: "WARN", detail: "tcg software emulation: KVM_CREATE_VM failed",
			reportOK: true,
		},
		{
			name:  "accel kvm",
			opts:  func(o *Options) { o.Accel = "kvm" },
			check: "accel", status: "ok", detail: "kvm",
			reportOK: true,
		},
		{
			name: "bridge module on disk",
			mutate: func(m *fakeMachine) {
				delete(m.files, "/sys/module/bridge")
				m.files["/proc/sys/kernel/osrelease"] = "6.1.0-56-cloud-amd64\n"
				m.files["/lib/modules/6.1.0-56-cloud-amd64/kernel/net/bridge"] = ""
			},
			check: "bridge", status: "ok", detail: "loads on first use", reportOK: true,
		},
		{
			name: "bridge built in",
			mutate: func(m *fakeMachine) {
				delete(m.files, "/sys/module/bridge")
				m.files["/proc/sys/kernel/osrelease"] = "6.1.0\n"
				m.files["/lib/modules/6.1.0/modules.builtin"] = "kernel/net/ipv4/tcp.ko\nkernel/net/bridge/bridge.ko\n"
			},
			check: "bridge", status: "ok", detail: "built into the kernel", reportOK: true,
		},
		{
			name: "bridge in /proc/modules",
			mutate: func(m *fakeMachine) {
				delete(m.files, "/sys/module/bridge")
				m.files["/proc/modules"] = "stp 16384 1 bridge, Live 0x0\nbridge 311296 0 - Live 0x0\n"
			},
			check: "bridge", status: "ok", detail: "loaded", reportOK: true,
		},
		{
			name:   "bridge unknown warns",
			mutate: func(m *fakeMachine) { delete(m.files, "/sys/module/bridge") },
			check:  "bridge", status: "WARN", detail: "could not confirm", fix: "modprobe bridge",
			reportOK: true,
		},
		{
			name:   "no tun",
			mutate: func(m *fakeMachine) { delete(m.files, "/dev/net/tun") },
			check:  "tun", status: "FAIL", detail: "/dev/net/tun not present", fix: "modprobe tun",
		},
		{
			name:   "tun not openable",
			mutate: func(m *fakeMachine) { m.noOpen = map[string]bool{"/dev/net/tun": true} },
			check:  "tun", status: "FAIL", detail: "cannot open /dev/net/tun", fix: "root",
		},
		{
			name: "not root, no caps",
			mutate: func(m *fakeMachine) {
				m.euid = 1000
				m.files["/proc/self/status"] = capNone
			},
			check: "privileges", status: "FAIL", detail: "uid 1000 without CAP_NET_ADMIN", fix: "run as root",
		},
		{
			name: "not root, with CAP_NET_ADMIN",
			mutate: func(m *fakeMachine) {
				m.euid = 1000
				m.files["/proc/self/status"] = capOnlyNetAdm
			},
			check: "privileges", status: "ok", detail: "uid 1000 with CAP_NET_ADMIN", reportOK: true,
		},
		{
			name:   "root without CAP_NET_ADMIN (restricted container)",
			mutate: func(m *fakeMachine) { m.files["/proc/self/status"] = "CapEff:\t000001ffffffefff\n" },
			check:  "privileges", status: "FAIL", detail: "root without CAP_NET_ADMIN",
		},
		{
			name:   "root, status unreadable",
			mutate: func(m *fakeMachine) { delete(m.files, "/proc/self/status") },
			check:  "privileges", status: "ok", detail: "running as root", reportOK: true,
		},
		{
			name: "not root, status unreadable",
			mutate: func(m *fakeMachine) {
				m.euid = 1000
				delete(m.files, "/proc/self/status")
			},
			check: "privileges", status: "FAIL", detail: "cannot read capabilities",
		},
		{
			name:   "low memory",
			mutate: func(m *fakeMachine) { m.files["/proc/meminfo"] = "MemTotal: 1000000 kB\nMemAvailable:     512000 kB\n" },
			check:  "memory", status: "FAIL", detail: "500 MiB available, need at least 1024 MiB", fix: "free memory",
		},
		{
			name:   "no MemAvailable",
			mutate: func(m *fakeMachine) { m.files["/proc/meminfo"] = "MemTotal: 1000000 kB\n" },
			check:  "memory", status: "WARN", detail: "no MemAvailable",
			reportOK: true,
		},
		{
			name:  "memory no minimum",
			opts:  func(o *Options) { o.MinFreeMemMiB = 0 },
			check: "memory", status: "ok", detail: "8192 MiB available",
			reportOK: true,
		},
		{
			name:   "low disk",
			mutate: func(m *fakeMachine) { m.freeDisk["/var/lib"] = 100 << 20 },
			check:  "disk", status: "FAIL", detail: "100 MiB free at /var/lib/shoal", fix: "--data-dir",
		},
		{
			name: "disk measured at existing data dir",
			mutate: func(m *fakeMachine) {
				m.files["/var/lib/shoal"] = ""
				m.freeDisk["/var/lib/shoal"] = 5000 << 20
			},
			check: "disk", status: "ok", detail: "5000 MiB free at /var/lib/shoal", reportOK: true,
		},
		{
			name:   "statfs fails",
			mutate: func(m *fakeMachine) { delete(m.freeDisk, "/var/lib") },
			check:  "disk", status: "WARN", detail: "cannot measure free space",
			reportOK: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := goodMachine()
			if tt.mutate != nil {
				tt.mutate(&m)
			}
			opts := baseOpts
			if tt.opts != nil {
				tt.opts(&opts)
			}
			r := RunWith(context.Background(), opts, m.env())
			c, found := r.Find(tt.check)
			if !found {
				t.Fatalf("no %q check in report:\n%s", tt.check, r)
			}
			if c.Status() != tt.status || !strings.Contains(c.Detail, tt.detail) || !strings.Contains(c.Fix, tt.fix) {
				t.Errorf("check %q = %+v, want status %s, detail containing %q, fix containing %q", tt.check, c, tt.status, tt.detail, tt.fix)
			}
			if r.OK() != tt.reportOK {
				t.Errorf("Report.OK() = %v, want %v:\n%s", r.OK(), tt.reportOK, r)
			}
		})
	}
}

func TestRunWithSkipsOptionalChecks(t *testing.T) {
	r := RunWith(context.Background(), Options{}, goodMachine().env())
	for _, name := range []string{"accel", "disk"} {
		if _, found := r.Find(name); found {
			t.Errorf("check %q ran without being asked for", name)
		}
	}
	want := []string{"qemu-system-x86_64", "qemu-img", "genisoimage", "kvm", "bridge", "tun", "privileges", "memory"}
	if len(r.Checks) != len(want) {
		t.Fatalf("got %d checks, want %d:\n%s", len(r.Checks), len(want), r)
	}
	for i, name := range want {
		if r.Checks[i].Name != name {
			t.Errorf("check %d is %q, want %q", i, r.Checks[i].Name, name)
		}
	}
}

func TestReportString(t *testing.T) {
	r := Report{Checks: []Check{
		{Name: "qemu-system-x86_64", OK: true, Detail: "QEMU emulator version 7.2.22", Fix: "ignored when ok"},
		{Name: "qemu-img", Detail: "not found in PATH", Fix: "apt-get install qemu-utils"},
		{Name: "kvm", Warn: true, Detail: "/dev/kvm not present", Fix: "modprobe kvm_intel"},
	}}
	want := "ok   qemu-system-x86_64  QEMU emulator version 7.2.22\n" +
		"FAIL qemu-img            not found in PATH — apt-get install qemu-utils\n" +
		"WARN kvm                 /dev/kvm not present — modprobe kvm_intel\n"
	if got := r.String(); got != want {
		t.Errorf("String() =\n%s\nwant\n%s", got, want)
	}
	if r.OK() {
		t.Error("OK() with a failed check")
	}
	r.Checks[1].OK = true
	if !r.OK() {
		t.Error("OK() false with only a warning")
	}
	if !(Report{}).OK() {
		t.Error("empty report not OK")
	}
}

func TestRunWithCancelledContext(t *testing.T) {
	// A hung --version must not hang Run: the fake honours ctx.
	m := goodMachine()
	env := m.env()
	env.Output = func(ctx context.Context, name string, args ...string) ([]byte, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r := RunWith(ctx, Options{}, env)
	if c, _ := r.Find("qemu-system-x86_64"); !c.Failed() || !strings.Contains(c.Detail, "context canceled") {
		t.Errorf("qemu check with cancelled ctx: %+v", c)
	}
}

// TestRunRealMachine checks this machine for real. QEMU is a hard
// requirement of the project's test machines, so it must be found.
func TestRunRealMachine(t *testing.T) {
	r := Run(context.Background(), Options{DataDir: t.TempDir(), MinFreeMemMiB: 64, MinFreeDiskMiB: 64})
	t.Logf("report:\n%s", r)
	for _, name := range []string{"qemu-system-x86_64", "qemu-img"} {
		c, found := r.Find(name)
		if !found || !c.OK {
			t.Errorf("%s not usable on this machine: %+v", name, c)
		}
	}
	if c, _ := r.Find("qemu-system-x86_64"); !strings.HasPrefix(c.Detail, "QEMU emulator version ") {
		t.Errorf("qemu detail %q", c.Detail)
	}
	if os.Geteuid() == 0 {
		if c, _ := r.Find("privileges"); !c.OK {
			t.Errorf("running as root but privileges check says %+v", c)
		}
	}
}
