package main

import (
	"bytes"
	"io"
	"runtime"

	"context"
	"encoding/json"
	"fmt"
	"golang.org/x/sys/unix"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
)

// The integration tests run the real binary: 'shoal up' inside a network
// namespace the test makes, real etcd, real QEMU (TCG), real bridges.

var shoalBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "shoal-bin-")
	if err != nil {
		panic(err)
	}
	shoalBin = filepath.Join(dir, "shoal")
	if out, err := exec.Command("go", "build", "-o", shoalBin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build shoal: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("integration tests need root")
		}
		t.Skip("integration tests need root")
	}
}

var nsSeq atomic.Int32

// testNode is one isolated Shoal node for a test.
type testNode struct {
	t    testing.TB
	ns   string
	dir  string
	node *exec.Cmd
	log  *bytes.Buffer
	env  []string
}

func newLab(t testing.TB) *testNode {
	t.Helper()
	requireRoot(t)
	ns := fmt.Sprintf("shoalt%d-%d", os.Getpid(), nsSeq.Add(1))
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	return newLabIn(t, ns)
}

// newLabIn is newLab in the namespace ns, made already; the node's
// cleanup deletes it.
func newLabIn(t testing.TB, ns string) *testNode {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "shoalt")
	if err != nil {
		t.Fatal(err)
	}
	l := &testNode{t: t, ns: ns, dir: dir, env: []string{"SHOAL_CONFIG=" + filepath.Join(dir, "config.json")}}
	l.run("ip", "link", "set", "lo", "up")
	t.Cleanup(l.cleanup)
	return l
}

// run executes a command inside the lab's namespace.
func (l *testNode) run(args ...string) string {
	l.t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", l.ns}, args...)...).CombinedOutput()
	if err != nil {
		l.t.Fatalf("%v: %v\n%s", args, err, out)
	}
	return string(out)
}

// start runs 'shoal up' and waits until its API answers.
func (l *testNode) start(extraEnv ...string) {
	l.t.Helper()
	l.startWith(nil, extraEnv...)
}

// startWith runs 'shoal up' with extra flags and environment.
func (l *testNode) startWith(flags []string, extraEnv ...string) {
	l.t.Helper()
	l.log = &bytes.Buffer{}
	args := []string{"netns", "exec", l.ns, shoalBin, "up", "--data-dir", filepath.Join(l.dir, "data"),
		"--no-demo", "--accel", "tcg", "--stop-timeout", "15s", "-v"}
	l.node = exec.Command("ip", append(args, flags...)...)
	l.node.Env = append(append(os.Environ(), l.env...), extraEnv...)
	l.node.Stdout, l.node.Stderr = l.log, l.log
	if err := l.node.Start(); err != nil {
		l.t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if strings.Contains(l.log.String(), "Shoal is up") {
			return
		}
		if l.node.ProcessState != nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	l.t.Fatalf("shoal up did not come up:\n%s", l.log.String())
}

// startFails runs 'shoal up' with flags that must make it fail, and
// returns what it printed.
func (l *testNode) startFails(flags ...string) string {
	l.t.Helper()
	args := []string{"netns", "exec", l.ns, shoalBin, "up", "--data-dir", filepath.Join(l.dir, "data"), "--no-demo", "--accel", "tcg"}
	cmd := exec.Command("ip", append(args, flags...)...)
	cmd.Env = append(os.Environ(), l.env...)
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		l.t.Fatalf("shoal up %v did not fail:\n%s", flags, out)
	}
	if err == nil {
		l.t.Fatalf("shoal up %v succeeded:\n%s", flags, out)
	}
	return string(out)
}

// kill ends the node with SIGKILL, as a crash would.
func (l *testNode) kill() {
	if l.node == nil || l.node.Process == nil {
		return
	}
	_ = l.node.Process.Signal(syscall.SIGKILL)
	_ = l.node.Wait()
	l.node = nil
}

// waitExit waits for a node that is expected to die (a crash point).
func (l *testNode) waitExit(d time.Duration) {
	l.t.Helper()
	done := make(chan struct{})
	go func() { _ = l.node.Wait(); close(done) }()
	select {
	case <-done:
		l.node = nil
	case <-time.After(d):
		l.t.Fatalf("node did not crash at the crash point:\n%s", l.log.String())
	}
}

// shoal runs the CLI inside the namespace against the node.
func (l *testNode) shoal(args ...string) (stdout, stderr string, err error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", l.ns, shoalBin}, args...)...)
	cmd.Env = append(os.Environ(), l.env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

func (l *testNode) mustShoal(args ...string) string {
	l.t.Helper()
	out, errOut, err := l.shoal(args...)
	if err != nil {
		l.t.Fatalf("shoal %s: %v\n%s%s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

func (l *testNode) vm(name string) api.VM {
	l.t.Helper()
	var vm api.VM
	if err := json.Unmarshal([]byte(l.mustShoal("vm", "show", name, "-o", "json")), &vm); err != nil {
		l.t.Fatal(err)
	}
	return vm
}

func (l *testNode) vmNames() []string {
	l.t.Helper()
	var vms []api.VM
	if err := json.Unmarshal([]byte(l.mustShoal("vm", "list", "-o", "json")), &vms); err != nil {
		l.t.Fatal(err)
	}
	var names []string
	for _, v := range vms {
		names = append(names, v.Name+"="+v.State)
	}
	return names
}

// reply is the tiny guest's answer.
type reply struct {
	Boot        string
	Count, Disk int
}

// get fetches http://ip/ from inside the namespace, as a client there would.
func (l *testNode) get(ip string) (reply, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+ip+"/", nil)
	resp, err := l.httpClient().Do(req)
	if err != nil {
		return reply{}, fmt.Errorf("GET %s: %w", ip, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		return reply{}, fmt.Errorf("GET %s: %w", ip, err)
	}
	var r reply
	for _, f := range strings.Fields(string(out)) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "boot":
			r.Boot = v
		case "count":
			r.Count, _ = strconv.Atoi(v)
		case "disk":
			r.Disk, _ = strconv.Atoi(v)
		}
	}
	if r.Boot == "" || r.Count == 0 {
		return r, fmt.Errorf("unexpected answer %q", out)
	}
	return r, nil
}

// httpClient makes its connections from inside the lab's namespace.
func (l *testNode) httpClient() *http.Client {
	return &http.Client{Transport: &http.Transport{DisableKeepAlives: true, DialContext: l.dial}}
}

// dial opens a TCP connection from inside the namespace: the socket is
// made on an OS thread moved into the namespace, a thread that is then
// thrown away rather than returned to Go's pool.
func (l *testNode) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		f, err := os.Open("/var/run/netns/" + l.ns)
		if err != nil {
			ch <- result{nil, err}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{nil, fmt.Errorf("setns: %w", err)}
			return
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// waitServing polls the VM until it answers HTTP.
func (l *testNode) waitServing(ip string, d time.Duration) reply {
	l.t.Helper()
	deadline := time.Now().Add(d)
	var err error
	for time.Now().Before(deadline) {
		var r reply
		if r, err = l.get(ip); err == nil {
			return r
		}
		time.Sleep(200 * time.Millisecond)
	}
	l.t.Fatalf("%s never answered: %v", ip, err)
	return reply{}
}

// qemuPids lists the QEMU processes whose command line mentions the lab's dir.
func (l *testNode) qemuPids() []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if bytes.Contains(b, []byte("qemu-system")) && bytes.Contains(b, []byte(l.dir)) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// files lists what is left in the lab's VM state dirs and pools.
func (l *testNode) files() []string {
	var out []string
	for _, d := range []string{"data/agent/vms", "data/pools/local"} {
		ents, _ := os.ReadDir(filepath.Join(l.dir, d))
		for _, e := range ents {
			out = append(out, filepath.Join(d, e.Name()))
		}
	}
	return out
}

// taps lists the tap devices in the namespace.
func (l *testNode) taps() []string {
	out, _ := exec.Command("ip", "netns", "exec", l.ns, "ip", "-o", "link", "show", "type", "tun").CombinedOutput()
	var taps []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(line); len(f) > 1 {
			taps = append(taps, strings.TrimSuffix(f[1], ":"))
		}
	}
	return taps
}

func (l *testNode) cleanup() {
	l.kill()
	for _, pid := range l.qemuPids() {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	time.Sleep(100 * time.Millisecond)
	_ = exec.Command("ip", "netns", "del", l.ns).Run()
	if l.t.Failed() && l.log != nil {
		l.t.Logf("node log:\n%s", l.log.String())
	}
	_ = os.RemoveAll(l.dir)
}

// shoalStdin runs the CLI with the given standard input.
func (l *testNode) shoalStdin(stdin string, args ...string) (stdout, stderr string, err error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", l.ns, shoalBin}, args...)...)
	cmd.Env = append(os.Environ(), l.env...)
	cmd.Stdin = strings.NewReader(stdin)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// unixClient is an HTTP client that reaches the node's unix socket.
func unixClient(sock string) *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
}

// token reads the admin token 'shoal up' wrote to the CLI settings.
func (l *testNode) token() string {
	l.t.Helper()
	b, err := os.ReadFile(filepath.Join(l.dir, "config.json"))
	if err != nil {
		l.t.Fatal(err)
	}
	var c struct{ Token string }
	if err := json.Unmarshal(b, &c); err != nil {
		l.t.Fatal(err)
	}
	return c.Token
}
