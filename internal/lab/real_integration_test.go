package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestLabIntegrationRealShoal builds a lab with the real shoal binary
// (server, agents, storage server, QEMU in TCG), makes a volume in the
// storage server's pool san, reaches a VM on the shared pool from the
// client namespace, cuts the power of its host, heals it, and takes the
// lab down (tgtd included).
func TestLabIntegrationRealShoal(t *testing.T) {
	requireRoot(t)
	requireNoLab(t)
	for _, tool := range []string{"qemu-system-x86_64", "busybox", "wget"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing: run 'make deps'", tool)
		}
	}
	ctx, log := context.Background(), testLog(t)
	base := t.TempDir()
	bin := buildShoal(t, base)
	dir := filepath.Join(base, "lab")
	t.Cleanup(func() { _ = Down(ctx, log, dir) })
	s, err := Up(ctx, log, Options{Dir: dir, Hosts: 2, Binary: bin})
	if err != nil {
		for _, name := range []string{"server", "agent-host1", "agent-host2", "storage-server"} {
			b, _ := os.ReadFile(Layout{dir}.Log(name))
			t.Logf("%s log:\n%s", name, b)
		}
		t.Fatal(err)
	}
	l := s.Layout()
	shoal := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Env = labEnv(l)
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		if err := cmd.Run(); err != nil {
			t.Fatalf("shoal %s: %v\n%s%s", strings.Join(args, " "), err, out.String(), errOut.String())
		}
		return out.String()
	}
	var hosts []struct{ Name, State, Role string }
	if err := json.Unmarshal([]byte(shoal("host", "list", "-o", "json")), &hosts); err != nil || len(hosts) != 3 ||
		hosts[2].Name != "storage" || hosts[2].Role != "storage" || hosts[2].State != "up" {
		t.Fatalf("host list (two hosts and the storage server): %v %+v", err, hosts)
	}
	// The storage server's pool san is there at once: a volume of it is
	// a LUN file in the lab's SAN dir.
	var vol struct{ ID, State, Host string }
	if err := json.Unmarshal([]byte(shoal("volume", "create", "v1", "--size", "64M", "--pool", "san", "-o", "json")), &vol); err != nil ||
		vol.State != "ready" || vol.Host != "storage" {
		t.Fatalf("volume create in pool san: %v %+v", err, vol)
	}
	if _, err := os.Stat(filepath.Join(l.SAN(), "vol-"+vol.ID+".img")); err != nil {
		t.Errorf("the volume's LUN file: %v", err)
	}
	tgtd := 0
	if b, err := os.ReadFile(filepath.Join(l.Storage(), "tgtd", "tgtd.sock.0.pid")); err == nil {
		tgtd, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	if !alive(tgtd) || !inNS(tgtd, StorageNS) {
		t.Errorf("the storage server's tgtd (%d) does not run in namespace storage", tgtd)
	}

	shoal("vm", "create", "web1", "--image", "tiny", "--memory", "256M", "--disk", "1G", "--pool", "shared", "--start")
	var vm struct {
		Host, IP string
		Pid      int
	}
	if err := json.Unmarshal([]byte(shoal("vm", "show", "web1", "-o", "json")), &vm); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(vm.IP, "10.57.0.") || vm.Pid == 0 {
		t.Fatalf("vm: %+v", vm)
	}
	if !inNS(vm.Pid, vm.Host) || !mentions(cmdline(vm.Pid), dir) {
		t.Errorf("the VM's QEMU (%d) does not run in %s under the lab dir", vm.Pid, vm.Host)
	}
	var answer string
	deadline := time.Now().Add(45 * time.Second)
	for answer == "" && time.Now().Before(deadline) {
		var out bytes.Buffer
		code, err := Exec(ctx, dir, "client", []string{"wget", "-T", "2", "-qO-", "http://" + vm.IP + "/"}, Stdio{Out: &out})
		if err != nil {
			t.Fatal(err)
		}
		if code == 0 && strings.HasPrefix(out.String(), "boot=") {
			answer = out.String()
		} else {
			time.Sleep(500 * time.Millisecond)
		}
	}
	if answer == "" {
		t.Fatalf("the client never reached the VM at %s", vm.IP)
	}

	// Power cut: the VM's host's agent and QEMU die at once; the other
	// host is untouched. Heal brings the agent back and the host up.
	agent := s.proc("agent-" + vm.Host).Pid
	if err := Fail(ctx, log, dir, vm.Host, Power); err != nil {
		t.Fatal(err)
	}
	if alive(agent) || alive(vm.Pid) {
		t.Errorf("after the power cut: agent alive %v, QEMU alive %v", alive(agent), alive(vm.Pid))
	}
	if err := Heal(ctx, log, dir, vm.Host); err != nil {
		t.Fatal(err)
	}
	if p := mustLoad(t, dir).proc("agent-" + vm.Host); p.Pid == agent || !alive(p.Pid) || !inNS(p.Pid, vm.Host) {
		t.Errorf("the agent of %s after heal: pid %d (was %d), alive %v", vm.Host, p.Pid, agent, alive(p.Pid))
	}
	hctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := (Shoal{Binary: bin}).WaitHosts(hctx, l, 2); err != nil {
		b, _ := os.ReadFile(l.Log("agent-" + vm.Host))
		t.Fatalf("%v\nagent log:\n%s", err, b)
	}

	pids := []int{vm.Pid, agent, tgtd}
	for _, p := range mustLoad(t, dir).Procs {
		pids = append(pids, p.Pid)
	}
	if err := Down(ctx, log, dir); err != nil {
		t.Fatal(err)
	}
	requireGone(t, dir, pids)
}

// buildShoal builds the real binary into dir.
func buildShoal(t testing.TB, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "shoal")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/shoal").CombinedOutput(); err != nil {
		t.Fatalf("build shoal: %v\n%s", err, out)
	}
	return bin
}
