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
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The integration tests build real labs (namespaces, veths, a bridge) as
// root, with the server and agents replaced by fake long-running processes:
// this test binary run as "fake-shoal ROLE ...".

func TestMain(m *testing.M) {
	if len(os.Args) > 2 && os.Args[1] == "fake-shoal" {
		fakeShoal(os.Args[2], os.Args[3:])
		return
	}
	os.Exit(m.Run())
}

// fakeShoal stands in for a Shoal process: "server CONFIG SOCKETURL"
// writes the CLI settings as the real server does, "dies" exits at once;
// every role but "dies" then runs until killed.
func fakeShoal(role string, args []string) {
	switch role {
	case "server":
		b, _ := json.Marshal(map[string]string{"server": args[1], "token": "fake-admin"})
		if err := os.WriteFile(args[0], b, 0o600); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println("Shoal server is up")
	case "dies":
		fmt.Fprintln(os.Stderr, "fake server: cannot listen")
		os.Exit(1)
	}
	time.Sleep(time.Hour)
}

// fakeControl runs this test binary in place of the server and agents.
type fakeControl struct {
	bin        string
	serverDies bool
}

func (f fakeControl) ServerArgv(l Layout) []string {
	if f.serverDies {
		return []string{f.bin, "fake-shoal", "dies", l.Ctl()}
	}
	return []string{f.bin, "fake-shoal", "server", l.Config(), l.SocketURL(), l.Ctl()}
}

func (f fakeControl) AgentArgv(l Layout, k int, token string) []string {
	return []string{f.bin, "fake-shoal", "agent", l.Host(k), token}
}

func (f fakeControl) WaitServer(ctx context.Context, l Layout) error {
	return poll(ctx, "fake server", func() error {
		_, err := os.Stat(l.Config())
		return err
	})
}

func (f fakeControl) JoinToken(ctx context.Context, l Layout) (string, error) {
	return "fake-token", nil
}

func (f fakeControl) WaitHosts(ctx context.Context, l Layout, hosts int) error { return nil }

func (f fakeControl) StorageArgv(l Layout, token string) []string {
	return []string{f.bin, "fake-shoal", "storage", l.Storage(), token}
}

func (f fakeControl) StoragePool(ctx context.Context, l Layout) error { return nil }

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("the lab's integration tests need root")
		}
		t.Skip("the lab's integration tests need root")
	}
}

// requireNoLab fails, touching nothing, if any namespace of a lab's names
// exists: it is not this test's to remove.
func requireNoLab(t testing.TB) {
	t.Helper()
	var found []string
	for _, n := range (&State{Hosts: MaxHosts, Servers: MaxServers}).Members() {
		if nsExists(n) {
			found = append(found, n)
		}
	}
	if len(found) > 0 {
		t.Fatalf("network namespaces %v already exist (another lab runs on this machine?): the lab tests need ctl, client and host1..host%d free; remove that lab with 'shoal lab down --dir ITS_DIR' and rerun", found, MaxHosts)
	}
}

func testBinary(t *testing.T) string {
	t.Helper()
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

func testLog(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// rootNet is what the root network namespace has that the lab could touch:
// link names, IPv4/IPv6 addresses and routes.
func rootNet(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, args := range [][]string{{"-o", "link", "show"}, {"-o", "addr", "show"}, {"route", "show"}, {"-6", "route", "show"}} {
		out, err := exec.Command("ip", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("ip %v: %v %s", args, err, out)
		}
		for _, line := range strings.Split(string(out), "\n") {
			// Keep what identifies a link, not its changing state.
			if args[1] == "link" {
				if f := strings.Fields(line); len(f) > 1 {
					line = f[1]
				}
			}
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// ping tells whether member reaches addr (a few tries: the first ARP may
// take a moment).
func ping(t *testing.T, dir, member, addr string, tries int) bool {
	t.Helper()
	for i := 0; i < tries; i++ {
		var out bytes.Buffer
		code, err := Exec(context.Background(), dir, member, []string{"busybox", "ping", "-c1", "-W1", addr}, Stdio{Out: &out, Err: &out})
		if err != nil {
			t.Fatal(err)
		}
		if code == 0 {
			return true
		}
	}
	return false
}

func ipOut(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %v: %v %s", args, err, out)
	}
	return string(out)
}

// inNS tells whether pid runs in the named namespace.
func inNS(pid int, name string) bool {
	dev, ino, ok := pidNetns(pid)
	ndev, nino, err := nsID(name)
	return ok && err == nil && dev == ndev && ino == nino
}

// requireGone checks that down left nothing: no namespace, no process, no
// file.
func requireGone(t *testing.T, dir string, pids []int) {
	t.Helper()
	for _, n := range (&State{Hosts: MaxHosts, Servers: MaxServers}).Members() {
		if nsExists(n) {
			t.Errorf("namespace %s is still there", n)
		}
	}
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("process %d (%q) still runs", pid, cmdline(pid))
		}
	}
	if vs := find(func(p procInfo) string {
		if mentions(p.argv, dir) {
			return "mentions the lab dir"
		}
		return ""
	}); len(vs) > 0 {
		for _, v := range vs {
			t.Errorf("process %d %q still runs", v.pid, cmdline(v.pid))
		}
		release(vs)
	}
	if _, err := os.Stat(dir); err == nil {
		t.Errorf("%s is still there", dir)
	}
}

// startFakeQEMU runs a process named qemu-system-x86_64 in host's
// namespace whose command line names a disk in diskDir.
func startFakeQEMU(t *testing.T, l Layout, host, diskDir string) int {
	t.Helper()
	link := filepath.Join(diskDir, "qemu-system-x86_64")
	if err := os.Symlink(testBinary(t), link); err != nil && !os.IsExist(err) {
		t.Fatal(err)
	}
	pid, err := startDetached(host, []string{link, "fake-shoal", "qemu", "-drive", "file=" + filepath.Join(diskDir, "disk.qcow2") + ",if=virtio"},
		l.Log("qemu-"+host), labEnv(l))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "fake qemu to run in "+host, func() bool { return alive(pid) && inNS(pid, host) && isQEMU(cmdline(pid)) })
	return pid
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestLabIntegration(t *testing.T) {
	requireRoot(t)
	requireNoLab(t)
	ctx, log := context.Background(), testLog(t)
	base := t.TempDir()
	dir := filepath.Join(base, "lab")
	user := filepath.Join(base, "home", "config.json")
	os.MkdirAll(filepath.Dir(user), 0o700)
	os.WriteFile(user, []byte(`{"server":"https://mine:7443"}`), 0o600)
	rootBefore := rootNet(t)
	t.Cleanup(func() { _ = Down(ctx, log, dir) })

	s, err := Up(ctx, log, Options{Dir: dir, Hosts: 2, Control: fakeControl{bin: testBinary(t)}, UserConfig: user})
	if err != nil {
		t.Fatal(err)
	}
	l := s.Layout()
	if !s.Ready {
		t.Error("the lab is not marked ready")
	}
	for _, n := range []string{"ctl", "client", "storage", "host1", "host2"} {
		if !nsExists(n) {
			t.Errorf("namespace %s missing", n)
		}
	}
	for _, d := range []string{l.Ctl(), l.Host(1), l.Host(2), l.Shared(), l.Logs(), l.Storage(), l.SAN()} {
		if st, err := os.Stat(d); err != nil || !st.IsDir() {
			t.Errorf("%s: %v", d, err)
		}
	}
	if after := rootNet(t); after != rootBefore {
		t.Errorf("the root namespace changed:\nbefore:\n%s\nafter:\n%s", rootBefore, after)
	}

	// Processes: detached, recorded, each in its namespace.
	var pids []int
	for name, ns := range map[string]string{"server": "ctl", "agent-host1": "host1", "agent-host2": "host2", "storage-server": "storage"} {
		p := s.proc(name)
		if p == nil || !alive(p.Pid) {
			t.Fatalf("%s is not running: %+v", name, p)
		}
		if !inNS(p.Pid, ns) {
			t.Errorf("%s runs outside %s", name, ns)
		}
		if sid, _ := sessionID(p.Pid); sid != p.Pid {
			t.Errorf("%s is not in a session of its own (sid %d)", name, sid)
		}
		pids = append(pids, p.Pid)
	}
	if b, _ := os.ReadFile(l.Log("server")); !strings.Contains(string(b), "Shoal server is up") {
		t.Errorf("server log: %q", b)
	}
	if b, _ := os.ReadFile(user); !strings.Contains(string(b), l.SocketURL()) {
		t.Errorf("the CLI settings are not the lab's: %s", b)
	}
	if b, _ := os.ReadFile(user + backupSuffix); !strings.Contains(string(b), "https://mine:7443") {
		t.Errorf("the user's settings were not kept: %s", b)
	}
	if _, err := Up(ctx, log, Options{Dir: dir, Hosts: 2, Control: fakeControl{bin: testBinary(t)}}); err == nil || !strings.Contains(err.Error(), "a lab already runs in "+dir) {
		t.Errorf("second up in the same dir: %v", err)
	}
	other := filepath.Join(base, "other")
	if _, err := Up(ctx, log, Options{Dir: other, Hosts: 1, Control: fakeControl{bin: testBinary(t)}}); err == nil || !strings.Contains(err.Error(), "namespace ctl already exists") {
		t.Errorf("second lab: %v", err)
	}
	if _, err := os.Stat(other); err == nil {
		t.Error("a refused up made its dir")
	}

	// The switch: the client reaches ctl; host1's eth0 is up and bare.
	if !ping(t, dir, "client", "10.57.0.1", 5) {
		t.Fatal("client cannot ping 10.57.0.1 in ctl")
	}
	eth0 := ipOut(t, "-n", "host1", "-o", "link", "show", "eth0")
	if !linkFlagsUp(eth0) || !strings.Contains(eth0, "state UP") {
		t.Errorf("host1 eth0 is not up: %s", eth0)
	}
	if a := ipOut(t, "-n", "host1", "-o", "addr", "show", "dev", "eth0"); strings.Contains(a, "inet ") {
		t.Errorf("the lab put an address on host1's eth0: %s", a)
	}
	if m := ipOut(t, "-n", "ctl", "-o", "link", "show", "sw-host1"); !strings.Contains(m, "master sw0") {
		t.Errorf("sw-host1 is not on the switch: %s", m)
	}

	// Exec runs in the namespace and passes the exit status on.
	var out bytes.Buffer
	if code, err := Exec(ctx, dir, "client", []string{"sh", "-c", "ip -o addr show dev eth0; exit 7"}, Stdio{Out: &out, Err: &out}); err != nil || code != 7 {
		t.Errorf("exec: %d, %v", code, err)
	}
	if !strings.Contains(out.String(), "10.57.0.254/24") {
		t.Errorf("client's eth0: %s", out.String())
	}
	if _, err := Exec(ctx, dir, "host3", []string{"true"}, Stdio{}); err == nil {
		t.Error("exec in host3 of a 2-host lab succeeded")
	}

	// Partition: host1 (with the address its agent would give it) loses
	// the switch, and gets it back on heal; its agent keeps running.
	ipOut(t, "-n", "host1", "addr", "add", "10.57.0.2/24", "dev", "eth0")
	if !ping(t, dir, "host1", "10.57.0.1", 5) {
		t.Fatal("host1 cannot ping ctl")
	}
	agent1 := s.proc("agent-host1").Pid
	if err := Fail(ctx, log, dir, "host1", Partition); err != nil {
		t.Fatal(err)
	}
	if ping(t, dir, "host1", "10.57.0.1", 1) {
		t.Error("host1 reaches ctl while partitioned")
	}
	if !alive(agent1) {
		t.Error("a partition killed host1's agent")
	}
	st, err := GetStatus(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	if m := st.Members[3]; m.Name != "host1" || m.Cable != "down" || m.Failure != "partition" || !m.Running {
		t.Errorf("status of partitioned host1: %+v", m)
	}
	if err := Heal(ctx, log, dir, "host1"); err != nil {
		t.Fatal(err)
	}
	if !ping(t, dir, "host1", "10.57.0.1", 5) {
		t.Error("host1 cannot reach ctl after heal")
	}
	if now := mustLoad(t, dir).proc("agent-host1").Pid; now != agent1 {
		t.Errorf("heal restarted a running agent: %d -> %d", agent1, now)
	}

	// Power: host2's agent and VM die at once; host1's VM, agent and the
	// server live on. Heal starts the agent again.
	vm1 := startFakeQEMU(t, l, "host1", l.Host(1))
	vm2 := startFakeQEMU(t, l, "host2", l.Host(2))
	pids = append(pids, vm1, vm2)
	agent2 := s.proc("agent-host2").Pid
	if err := Fail(ctx, log, dir, "host2", Power); err != nil {
		t.Fatal(err)
	}
	if alive(agent2) || alive(vm2) {
		t.Errorf("after power failure: agent alive %v, VM alive %v", alive(agent2), alive(vm2))
	}
	for _, pid := range []int{vm1, agent1, s.proc("server").Pid} {
		if !alive(pid) {
			t.Errorf("power failure of host2 killed %d (%q)", pid, cmdline(pid))
		}
	}
	st, _ = GetStatus(ctx, dir)
	if m := st.Members[2]; m.Name != "storage" || !m.Running || m.Cable != "up" || m.Address != "10.57.0.251" {
		t.Errorf("status of the storage server: %+v", m)
	}
	if m := st.Members[4]; m.Name != "host2" || m.Running || m.Failure != "power" || m.Cable != "down" {
		t.Errorf("status of powered-off host2: %+v", m)
	}
	if err := Heal(ctx, log, dir, "host2"); err != nil {
		t.Fatal(err)
	}
	p2 := mustLoad(t, dir).proc("agent-host2")
	if p2.Pid == agent2 || !alive(p2.Pid) || !inNS(p2.Pid, "host2") || !slices.Equal(cmdline(p2.Pid), p2.Argv) {
		t.Errorf("agent of host2 after heal: pid %d (was %d), argv %q", p2.Pid, agent2, cmdline(p2.Pid))
	}
	pids = append(pids, p2.Pid)
	st, _ = GetStatus(ctx, dir)
	if m := st.Members[4]; m.Name != "host2" || !m.Running || m.Failure != "" || m.Cable != "up" {
		t.Errorf("status of healed host2: %+v", m)
	}
	// The storage server is killed and started again like a server.
	stor := s.proc("storage-server").Pid
	if err := Kill(ctx, log, dir, "storage"); err != nil || alive(stor) {
		t.Errorf("kill storage: %v; alive %v", err, alive(stor))
	}
	if err := Revive(ctx, log, dir, "storage"); err != nil {
		t.Fatal(err)
	}
	if p := mustLoad(t, dir).proc("storage-server"); p.Pid == stor || !alive(p.Pid) || !inNS(p.Pid, "storage") {
		t.Errorf("the storage server after revive: %+v", p)
	} else {
		pids = append(pids, p.Pid)
	}
	if err := Fail(ctx, log, dir, "client", Power); err == nil {
		t.Error("fail client succeeded")
	}

	// Down removes everything, puts the user's settings back, and may run
	// again.
	if err := Down(ctx, log, dir); err != nil {
		t.Fatal(err)
	}
	requireGone(t, dir, pids)
	if b, _ := os.ReadFile(user); string(b) != `{"server":"https://mine:7443"}` {
		t.Errorf("the user's settings were not put back: %s", b)
	}
	if _, err := os.Stat(user + backupSuffix); err == nil {
		t.Error("the backup of the user's settings is still there")
	}
	if after := rootNet(t); after != rootBefore {
		t.Errorf("the root namespace changed:\nbefore:\n%s\nafter:\n%s", rootBefore, after)
	}
	if err := Down(ctx, log, dir); err != nil {
		t.Errorf("second down: %v", err)
	}
	if _, err := Exec(ctx, dir, "client", []string{"true"}, Stdio{}); err == nil {
		t.Error("exec without a lab succeeded")
	}
}

// TestLabIntegrationHalfMade makes up fail at each step and checks that
// down removes what it made.
func TestLabIntegrationHalfMade(t *testing.T) {
	requireRoot(t)
	requireNoLab(t)
	ctx, log := context.Background(), testLog(t)
	for _, c := range []struct {
		failAt     string
		serverDies bool
		want       string
	}{
		{failAt: "ns:host1", want: "simulated failure"},
		{failAt: "cable:host2", want: "simulated failure"},
		{failAt: "server", want: "simulated failure"},
		{serverDies: true, want: "server exited"},
		{failAt: "agent:host2", want: "simulated failure"},
		{failAt: "hosts", want: "simulated failure"},
		{failAt: "pool", want: "simulated failure"},
	} {
		name := c.failAt
		if c.serverDies {
			name = "server dies"
		}
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "lab")
			t.Cleanup(func() { _ = Down(ctx, log, dir) })
			s, err := Up(ctx, log, Options{Dir: dir, Hosts: 2, Control: fakeControl{bin: testBinary(t), serverDies: c.serverDies}, failAt: c.failAt, ReadyTimeout: 10 * time.Second})
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "shoal lab down --dir "+dir) {
				t.Fatalf("up: %v; want an error with %q that says how to clean up", err, c.want)
			}
			if !nsExists("ctl") {
				t.Error("the half-made lab has no ctl")
			}
			var pids []int
			for _, p := range s.Procs {
				pids = append(pids, p.Pid)
			}
			if err := Down(ctx, log, dir); err != nil {
				t.Fatal(err)
			}
			requireGone(t, dir, pids)
			if err := Down(ctx, log, dir); err != nil {
				t.Errorf("second down: %v", err)
			}
		})
	}
}

func mustLoad(t testing.TB, dir string) *State {
	t.Helper()
	s, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// sessionID reads the session of pid from /proc/PID/stat.
func sessionID(pid int) (int, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	f := strings.Fields(string(b[i+1:]))
	// state ppid pgrp session
	return strconv.Atoi(f[3])
}

// TestLabIntegrationCrashWindows: up stopped between recording a step and
// its effect. Down copes with a namespace recorded but never made, one made
// but not yet identified, a process recorded before it got a pid, and a
// recorded pid that now belongs to someone else (which it must not kill).
func TestLabIntegrationCrashWindows(t *testing.T) {
	requireRoot(t)
	requireNoLab(t)
	ctx, log := context.Background(), testLog(t)
	dir := filepath.Join(t.TempDir(), "lab")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	stranger := exec.Command("sleep", "60") // not the lab's: root namespace, no lab dir in its argv
	if err := stranger.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stranger.Process.Kill(); _ = stranger.Wait() })
	if out, err := exec.Command("ip", "netns", "add", "host1").CombinedOutput(); err != nil {
		t.Fatalf("ip netns add host1: %v %s", err, out)
	}
	t.Cleanup(func() {
		if nsExists("host1") {
			_ = exec.Command("ip", "netns", "del", "host1").Run()
		}
	})
	s := &State{Dir: dir, Hosts: 1,
		Namespaces: []Namespace{{Name: "ctl"}, {Name: "host1"}},
		Procs: []Proc{
			{Name: "server", NS: "ctl", Argv: []string{"x", dir}, Pid: stranger.Process.Pid},
			{Name: "agent-host1", NS: "host1", Argv: []string{"x", dir}},
		},
	}
	if err := s.save(); err != nil {
		t.Fatal(err)
	}
	// Something runs in host1 (as an agent that had started would).
	pid, err := startDetached("host1", []string{"sleep", "60"}, filepath.Join(dir, "sleep.log"), os.Environ())
	if err != nil {
		t.Fatal(err)
	}
	if err := Down(ctx, log, dir); err != nil {
		t.Fatal(err)
	}
	requireGone(t, dir, []int{pid})
	if !alive(stranger.Process.Pid) {
		t.Error("down killed a process that is not the lab's")
	}
}
