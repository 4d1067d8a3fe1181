package lab

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/pki"
	"github.com/shoalvm/shoal/internal/storage"
)

// TestLabConfinedQEMU is the check of issue 15's fourth hole: each VM's
// QEMU runs as a user of its own, not root, the same on every host; with
// its credentials (user, group, groups, read from the QEMU process) the
// cluster's CA key, the host's agent key and another VM's disk cannot be
// read, while its own disk can; and the VM serves, also after a live
// migration.
func TestLabConfinedQEMU(t *testing.T) {
	f := startLab(t, 2)
	a := f.createServing("conf-a", "--pool", "shared", "--host", "host1")
	b := f.createServing("conf-b", "--pool", "local", "--host", "host1")
	credA, credB := f.qemuCred(a.ID, "host1"), f.qemuCred(b.ID, "host1")
	for _, c := range []*syscall.Credential{credA, credB} {
		if c.Uid < api.VMUIDMin || c.Uid >= api.VMUIDMin+api.VMUIDCount || c.Gid != c.Uid {
			t.Fatalf("QEMU runs as uid %d gid %d, want one of the VMs' own ids", c.Uid, c.Gid)
		}
	}
	if credA.Uid == credB.Uid {
		t.Fatalf("both VMs' QEMUs run as uid %d", credA.Uid)
	}
	l := f.layout()
	diskA := filepath.Join(l.Shared(), a.ID+"-disk0.qcow2")
	diskB := storage.Pool{Dir: filepath.Join(l.Host(1), "pools", "local")}.DiskPath(b.ID)
	secrets := []string{
		filepath.Join(l.Ctl(), "pki", pki.CAKey),
		filepath.Join(l.Ctl(), "pki", pki.ServerKey),
		filepath.Join(l.Host(1), "pki", pki.AgentKey),
		diskB,
		filepath.Join(l.Host(1), "agent", "migration-tls", "server-key.pem"),
	}
	for _, p := range secrets {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("the test expects %s: %v", p, err)
		}
		if out, ok := readAs(credA, p); ok || !strings.Contains(out, "Permission denied") {
			t.Errorf("vm a's QEMU user reads %s: %q", p, out)
		}
	}
	if out, ok := readAs(credB, diskA); ok || !strings.Contains(out, "Permission denied") {
		t.Errorf("vm b's QEMU user reads vm a's disk: %q", out)
	}
	for _, c := range []struct {
		cred *syscall.Credential
		disk string
	}{{credA, diskA}, {credB, diskB}} {
		if out, ok := readAs(c.cred, c.disk); !ok || !strings.HasPrefix(out, "QFI") {
			t.Errorf("uid %d cannot read its own disk %s: %q", c.cred.Uid, c.disk, out)
		}
	}

	f.shoal("vm", "migrate", "conf-a", "--to", "host2")
	if got := f.qemuCred(a.ID, "host2"); got.Uid != credA.Uid {
		t.Errorf("after migrating, vm a's QEMU runs as uid %d, before as %d", got.Uid, credA.Uid)
	}
	for _, v := range []api.VM{a, b} {
		if _, ok := f.get(v.IP); !ok {
			t.Errorf("vm %s does not serve", v.Name)
		}
	}
}

// qemuCred reads the user, group and groups of VM id's QEMU on host.
func (f *labFixture) qemuCred(id, host string) *syscall.Credential {
	f.t.Helper()
	pids := f.qemuOf(id)[host]
	if len(pids) != 1 {
		f.t.Fatalf("QEMUs of vm %s on %s: %v", id, host, pids)
	}
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pids[0]) + "/status")
	if err != nil {
		f.t.Fatal(err)
	}
	c := &syscall.Credential{Groups: []uint32{}}
	for _, line := range strings.Split(string(raw), "\n") {
		k, v, _ := strings.Cut(line, ":")
		fs := strings.Fields(v)
		num := func(s string) uint32 {
			n, err := strconv.ParseUint(s, 10, 32)
			if err != nil {
				f.t.Fatalf("/proc/%d/status: %q", pids[0], line)
			}
			return uint32(n)
		}
		switch k {
		case "Uid":
			c.Uid = num(fs[0])
			for _, u := range fs {
				if num(u) == 0 {
					f.t.Fatalf("QEMU pid %d has root among its uids: %q", pids[0], line)
				}
			}
		case "Gid":
			c.Gid = num(fs[0])
		case "Groups":
			for _, g := range fs {
				c.Groups = append(c.Groups, num(g))
			}
		}
	}
	return c
}

// readAs reads the first bytes of path as cred; ok is whether it could.
func readAs(cred *syscall.Credential, path string) (string, bool) {
	cmd := exec.Command("head", "-c", "16", path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err == nil
}
