package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/netdev"
	"github.com/shoalvm/shoal/internal/qemu/qmp"
)

// labFixture is a lab of real Shoal hosts for one test, with the CLI at
// hand. It is taken down when the test ends.
type labFixture struct {
	t   testing.TB
	ctx context.Context
	log *slog.Logger
	dir string
	bin string
}

// startLab brings up a lab of n hosts with the real shoal binary.
func startLab(t testing.TB, n int) *labFixture {
	t.Helper()
	return startLabWith(t, Options{Hosts: n})
}

// startLabWith brings up a lab as o says (its Dir and Binary are the
// fixture's) with the real shoal binary.
func startLabWith(t testing.TB, o Options) *labFixture {
	t.Helper()
	requireRoot(t)
	requireNoLab(t)
	f := &labFixture{t: t, ctx: context.Background(), log: testLog(t)}
	base := t.TempDir()
	f.bin = buildShoal(t, base)
	f.dir = filepath.Join(base, "lab")
	t.Cleanup(func() {
		if t.Failed() {
			f.dumpLogs()
		}
		_ = Down(f.ctx, f.log, f.dir)
	})
	o.Dir, o.Binary = f.dir, f.bin
	if _, err := Up(f.ctx, f.log, o); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *labFixture) layout() Layout { return Layout{Dir: f.dir} }

// dumpLogs puts the tail of every log of the lab, and what each QEMU says
// of itself, into the test's output.
func (f *labFixture) dumpLogs() {
	socks, _ := filepath.Glob(filepath.Join(f.dir, "host*", "agent", "vms", "*", "qmp.sock"))
	for _, sock := range socks {
		ctx, cancel := context.WithTimeout(f.ctx, 2*time.Second)
		if c, err := qmp.Dial(ctx, sock); err == nil {
			var st, mig json.RawMessage
			_ = c.Execute(ctx, "query-status", nil, &st)
			_ = c.Execute(ctx, "query-migrate", nil, &mig)
			b, _ := os.ReadFile(filepath.Join(filepath.Dir(sock), "qemu.log"))
			f.t.Logf("--- %s: status %s, migration %s\nqemu.log:\n%s", sock, st, mig, b)
			c.Close()
		}
		cancel()
	}
	entries, _ := os.ReadDir(f.layout().Logs())
	for _, e := range entries {
		b, _ := os.ReadFile(filepath.Join(f.layout().Logs(), e.Name()))
		if len(b) > 12000 {
			b = b[len(b)-12000:]
		}
		f.t.Logf("--- %s (tail)\n%s", e.Name(), b)
	}
}

// try runs the shoal CLI against the lab.
func (f *labFixture) try(args ...string) (string, error) {
	cmd := exec.Command(f.bin, args...)
	cmd.Env = labEnv(f.layout())
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if err != nil {
		return out.String() + errOut.String(), fmt.Errorf("shoal %s: %w: %s%s", strings.Join(args, " "), err, out.String(), errOut.String())
	}
	return out.String(), nil
}

// shoal runs the shoal CLI and fails the test if it fails.
func (f *labFixture) shoal(args ...string) string {
	f.t.Helper()
	out, err := f.try(args...)
	if err != nil {
		f.t.Fatal(err)
	}
	return out
}

// vm returns what vm show -o json says of a VM.
func (f *labFixture) vm(name string) api.VM {
	f.t.Helper()
	var v api.VM
	if err := json.Unmarshal([]byte(f.shoal("vm", "show", name, "-o", "json")), &v); err != nil {
		f.t.Fatal(err)
	}
	return v
}

// get asks a VM for / once from the client namespace.
func (f *labFixture) get(ip string) (string, bool) {
	var out bytes.Buffer
	code, err := Exec(f.ctx, f.dir, "client", []string{"wget", "-T", "2", "-qO-", "http://" + ip + "/"}, Stdio{Out: &out})
	return strings.TrimSpace(out.String()), err == nil && code == 0 && strings.HasPrefix(out.String(), "boot=")
}

// waitServing waits until the VM answers the client.
func (f *labFixture) waitServing(ip string, within time.Duration) string {
	f.t.Helper()
	deadline := time.Now().Add(within)
	for {
		if a, ok := f.get(ip); ok {
			return a
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("the client never reached the VM at %s", ip)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// createServing creates and starts a tiny VM and waits until it serves.
func (f *labFixture) createServing(name string, args ...string) api.VM {
	f.t.Helper()
	f.shoal(append([]string{"vm", "create", name, "--image", "tiny", "--memory", "128M", "--start"}, args...)...)
	v := f.vm(name)
	f.waitServing(v.IP, 2*time.Minute)
	return v
}

// waitFor polls ok until it holds or the time is up.
func (f *labFixture) waitFor(what string, within time.Duration, ok func() bool) {
	f.t.Helper()
	deadline := time.Now().Add(within)
	for !ok() {
		if time.Now().After(deadline) {
			f.t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// qemuOf returns the pids of the QEMU processes of VM id, by lab host.
func (f *labFixture) qemuOf(id string) map[string][]int {
	out := map[string][]int{}
	s := mustLoad(f.t, f.dir)
	vs := find(func(p procInfo) string {
		if !isQEMU(p.argv) || !mentions(p.argv, id) {
			return ""
		}
		for k := 1; k <= s.Hosts; k++ {
			if mentions(p.argv, f.layout().Host(k)) {
				return HostName(k)
			}
		}
		return "?"
	})
	defer release(vs)
	for _, v := range vs {
		out[v.why] = append(out[v.why], v.pid)
	}
	return out
}

// debris lists what VM id has on hosts other than owner: QEMU processes,
// a state dir, disks on the local pool, a tap; and on every host, TCP
// listeners other than the agent's (a disk export, a migration or relay
// port). It also checks that exactly one QEMU of the VM runs, on owner.
func (f *labFixture) debris(id, owner string) []string {
	var bad []string
	s := mustLoad(f.t, f.dir)
	procs := f.qemuOf(id)
	for host, pids := range procs {
		if host != owner || len(pids) != 1 {
			bad = append(bad, fmt.Sprintf("QEMU of the VM on %s: pids %v", host, pids))
		}
	}
	if owner != "" && len(procs[owner]) == 0 {
		bad = append(bad, "no QEMU of the VM runs on its owner "+owner)
	}
	for k := 1; k <= s.Hosts; k++ {
		host := HostName(k)
		hostDir := f.layout().Host(k)
		if host != owner {
			if _, err := os.Stat(filepath.Join(hostDir, "agent", "vms", id)); err == nil {
				bad = append(bad, fmt.Sprintf("%s still has the VM's state dir", host))
			}
			if m, _ := filepath.Glob(filepath.Join(hostDir, "pools", "local", id+"*")); len(m) > 0 {
				bad = append(bad, fmt.Sprintf("%s still has local disks %v", host, m))
			}
			var out bytes.Buffer
			if code, _ := Exec(f.ctx, f.dir, host, []string{"ip", "link", "show", netdev.TapName(id)}, Stdio{Out: &out, Err: &out}); code == 0 {
				bad = append(bad, fmt.Sprintf("%s still has the VM's tap", host))
			}
		}
		if l := f.listeners(host); len(l) > 0 {
			bad = append(bad, fmt.Sprintf("%s listens on %v besides its agent", host, l))
		}
	}
	return bad
}

// listeners returns the TCP ports listening in a host's namespace, but
// for its agent's.
func (f *labFixture) listeners(host string) []string {
	var out bytes.Buffer
	if _, err := Exec(f.ctx, f.dir, host, []string{"ss", "-Hltn"}, Stdio{Out: &out}); err != nil {
		f.t.Fatal(err)
	}
	agentAddr := mustAddr(host).String() + ":"
	var l []string
	for _, line := range strings.Split(out.String(), "\n") {
		fs := strings.Fields(line)
		if len(fs) < 4 {
			continue
		}
		local := fs[3]
		if strings.HasPrefix(local, agentAddr) && strings.HasSuffix(local, fmt.Sprintf(":%d", AgentPort)) {
			continue
		}
		l = append(l, local)
	}
	return l
}

// requireClean waits a little for VM id to leave no debris (a host tidies
// up within a few seconds of a change), then fails the test if it does.
func (f *labFixture) requireClean(id, owner string) {
	f.t.Helper()
	var bad []string
	deadline := time.Now().Add(15 * time.Second)
	for {
		if bad = f.debris(id, owner); len(bad) == 0 {
			return
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("vm %s (owner %s) left debris: %s", id, owner, strings.Join(bad, "; "))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// envInt is the positive integer in environment variable name, or def.
func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}
