package main

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/pki"
)

// clusterRig is a server in one namespace and agent hosts in others,
// joined by a switch bridge in the server's namespace.
type clusterRig struct {
	*testNode // the server's namespace, dir and CLI
	hosts     map[string]*exec.Cmd
	hostNS    map[string]string
}

func newClusterRig(t *testing.T) *clusterRig {
	l := newLab(t)
	l.run("ip", "link", "add", "sw0", "type", "bridge")
	l.run("ip", "addr", "add", "10.57.0.1/24", "dev", "sw0")
	l.run("ip", "link", "set", "sw0", "up")
	c := &clusterRig{testNode: l, hosts: map[string]*exec.Cmd{}, hostNS: map[string]string{}}
	t.Cleanup(func() {
		for name := range c.hosts {
			c.killAgent(name)
		}
		for _, ns := range c.hostNS {
			_ = exec.Command("ip", "netns", "del", ns).Run()
		}
	})
	c.startServer()
	return c
}

// startServer runs 'shoal server' in the rig's namespace.
func (c *clusterRig) startServer() {
	c.t.Helper()
	l := c.testNode
	l.log = &bytes.Buffer{}
	l.node = exec.Command("ip", "netns", "exec", l.ns, shoalBin, "server", "--data-dir", filepath.Join(l.dir, "ctl"),
		"--listen", "10.57.0.1:7443", "--config", filepath.Join(l.dir, "config.json"), "-v")
	l.node.Stdout, l.node.Stderr = l.log, l.log
	if err := l.node.Start(); err != nil {
		c.t.Fatal(err)
	}
	waitFor(c.t, 60*time.Second, func() bool { return strings.Contains(l.log.String(), "Shoal server is up") }, l.log.String)
}

func waitFor(t testing.TB, d time.Duration, ok func() bool, why func() string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s: %s", d, why())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// addHostNS makes host k's namespace, wired to the switch.
func (c *clusterRig) addHostNS(name string, k int) {
	ns := fmt.Sprintf("%s-%s", c.ns, name)
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		c.t.Fatalf("ip netns add %s: %v %s", ns, err, out)
	}
	c.hostNS[name] = ns
	c.run("ip", "link", "add", "sw-"+name, "type", "veth", "peer", "name", "eth0", "netns", ns)
	c.run("ip", "link", "set", "sw-"+name, "master", "sw0", "up")
	for _, args := range [][]string{{"link", "set", "lo", "up"}, {"link", "set", "eth0", "up"}} {
		if out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput(); err != nil {
			c.t.Fatalf("%v: %v %s", args, err, out)
		}
	}
}

// agentArgs is the command line of host k's agent.
func (c *clusterRig) agentArgs(name string, k int, token string) []string {
	args := []string{"netns", "exec", c.hostNS[name], shoalBin, "agent", "--join", "https://10.57.0.1:7443",
		"--host", name, "--data-dir", filepath.Join(c.dir, name), "--listen", fmt.Sprintf("10.57.0.%d:7444", 1+k),
		"--network-addr", fmt.Sprintf("10.57.0.%d/24", 1+k), "--uplink", "eth0", "--accel", "tcg", "-v",
		"--shared-pool", "shared=" + filepath.Join(c.dir, "shared")}
	if token != "" {
		args = append(args, "--token", token)
	}
	return args
}

// startAgent runs host k's agent and waits for it to say it is up.
func (c *clusterRig) startAgent(name string, k int, token string) {
	c.t.Helper()
	var out bytes.Buffer
	cmd := exec.Command("ip", c.agentArgs(name, k, token)...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.hosts[name] = cmd
	waitFor(c.t, 60*time.Second, func() bool { return strings.Contains(out.String(), "agent of host "+name+" is up") }, out.String)
}

func (c *clusterRig) killAgent(name string) {
	if cmd := c.hosts[name]; cmd != nil && cmd.Process != nil {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
	}
	delete(c.hosts, name)
}

func (c *clusterRig) hostState(name string) string {
	var hosts []api.Host
	_ = json.Unmarshal([]byte(c.mustShoal("host", "list", "-o", "json")), &hosts)
	for _, h := range hosts {
		if h.Name == name {
			return h.State
		}
	}
	return "absent"
}

// TestIntegrationCluster joins a host to a server over the network and
// runs a VM on it: join tokens, mutual TLS, liveness, console and logs.
func TestIntegrationCluster(t *testing.T) {
	c := newClusterRig(t)
	c.addHostNS("host1", 1)
	c.addHostNS("host2", 2)

	// A made-up token is refused, and the host does not appear.
	out, err := exec.Command("ip", c.agentArgs("host1", 1, "0000.1111")...).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "does not match the join token") {
		t.Fatalf("bogus token: %v\n%s", err, out)
	}
	token := strings.TrimSpace(c.mustShoal("cluster", "token"))
	c.startAgent("host1", 1, token)
	// The token was for one join only.
	out, err = exec.Command("ip", c.agentArgs("host2", 2, token)...).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "invalid, used or expired") {
		t.Fatalf("reused token: %v\n%s", err, out)
	}
	if s := c.hostState("host1"); s != api.HostUp {
		t.Fatalf("host1 is %s", s)
	}

	c.mustShoal("vm", "create", "web1", "--image", "tiny", "--start")
	vm := c.vm("web1")
	if vm.Host != "host1" || vm.State != api.StateRunning || vm.CPUModel != "Nehalem" {
		t.Fatalf("vm: %+v", vm)
	}
	r1 := c.waitServing(vm.IP, 90*time.Second)
	if logs := c.mustShoal("vm", "logs", "web1"); !strings.Contains(logs, "serving on "+vm.IP) {
		t.Fatalf("logs through the host's API:\n%s", logs)
	}
	if con, _, _ := c.shoalStdin("echo via-$((40+2))\n", "vm", "console", "web1"); !strings.Contains(con, "via-42") {
		t.Fatalf("console through the host's API: %q", con)
	}

	// An agent speaks only for its own host.
	impersonate(t, c, filepath.Join(c.dir, "host1", "pki"))

	// The agent dies: the host goes down within its lease, the VM keeps
	// serving; the agent comes back without a token and finds the VM.
	c.killAgent("host1")
	start := time.Now()
	waitFor(t, 10*time.Second, func() bool { return c.hostState("host1") == api.HostDown }, func() string { return "host1 never went down" })
	t.Logf("host1 down %s after its agent died", time.Since(start).Round(100*time.Millisecond))
	if r, err := c.get(vm.IP); err != nil || r.Boot != r1.Boot {
		t.Fatalf("VM while its agent is down: %+v %v", r, err)
	}
	c.startAgent("host1", 1, "")
	waitFor(t, 10*time.Second, func() bool { return c.hostState("host1") == api.HostUp }, func() string { return "host1 never came back" })
	if r, err := c.get(vm.IP); err != nil || r.Boot != r1.Boot || r.Count != r1.Count+2 {
		t.Fatalf("VM after the agent came back: %+v %v (first %+v)", r, err, r1)
	}

	// The server dies: the host's VM keeps serving; when the server comes
	// back the agent catches up by itself and takes orders again.
	c.kill()
	time.Sleep(2 * time.Second)
	if r, err := c.get(vm.IP); err != nil || r.Boot != r1.Boot {
		t.Fatalf("VM while the server is down: %+v %v", r, err)
	}
	c.startServer()
	waitFor(t, 20*time.Second, func() bool { return c.hostState("host1") == api.HostUp }, func() string { return "host1 not up after the server returned" })
	c.mustShoal("vm", "restart", "web1")
	if r := c.waitServing(vm.IP, 90*time.Second); r.Boot == r1.Boot {
		t.Fatal("restart after the server came back did not reboot the VM")
	}

	// A second host; a VM on the shared pool keeps its disk (and the
	// image's base) where every host sees them; placement spreads.
	// A valid token does not buy a machine the name of an existing host.
	args := c.agentArgs("host2", 2, strings.TrimSpace(c.mustShoal("cluster", "token")))
	for i := range args {
		if args[i] == "--host" {
			args[i+1] = "host1"
		}
	}
	out, err = exec.Command("ip", args...).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "already a member") {
		t.Fatalf("joining as an existing host: %v\n%s", err, out)
	}
	c.startAgent("host2", 2, strings.TrimSpace(c.mustShoal("cluster", "token")))
	c.mustShoal("vm", "create", "s1", "--image", "tiny", "--pool", "shared", "--host", "host2", "--start")
	s1 := c.vm("s1")
	if _, err := os.Stat(filepath.Join(c.dir, "shared", s1.ID+"-disk0.qcow2")); err != nil || s1.Host != "host2" {
		t.Fatalf("shared-pool disk: %v (vm on %s)", err, s1.Host)
	}
	if bases, _ := filepath.Glob(filepath.Join(c.dir, "shared", ".images", "tiny", "*", "disk.qcow2")); len(bases) != 1 {
		t.Fatalf("shared-pool base image (one version of tiny): %q", bases)
	}
	placed := map[string]int{}
	for _, n := range []string{"p1", "p2"} {
		c.mustShoal("vm", "create", n, "--image", "tiny", "--memory", "128M", "--start")
		placed[c.vm(n).Host]++
	}
	if placed["host1"] != 1 || placed["host2"] != 1 {
		t.Fatalf("placement did not spread: %v", placed)
	}
	_, errOut, err := c.shoal("vm", "create", "big", "--image", "tiny", "--memory", "100T")
	if err == nil || !strings.Contains(errOut, "host1: ") || !strings.Contains(errOut, "host2: ") || !strings.Contains(errOut, "needs") {
		t.Fatalf("no-fit message does not name each host: %s", errOut)
	}
	for _, n := range []string{"web1", "s1", "p1", "p2"} {
		c.mustShoal("vm", "delete", "--force", n)
	}
	if _, err := os.Stat(filepath.Join(c.dir, "shared", s1.ID+"-disk0.qcow2")); !os.IsNotExist(err) {
		t.Fatalf("deleting a shared-pool VM left its disk: %v", err)
	}
	if pids := c.qemuPids(); len(pids) != 0 {
		t.Fatalf("QEMU left: %v", pids)
	}
}

// impersonate checks that host1's certificate cannot register host2 nor
// be used as an API token.
func impersonate(t *testing.T, c *clusterRig, pkiDir string) {
	t.Helper()
	tlsCfg, err := pki.AgentConfig(pkiDir)
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg.ServerName = "10.57.0.1"
	cl := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg, DialContext: c.dial}}
	body, _ := json.Marshal(api.Host{Name: "host2"})
	resp, err := cl.Post("https://10.57.0.1:7443/v1/agent/register?ttl=3s", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("host1 registering host2: %d", resp.StatusCode)
	}
	resp, err = cl.Get("https://10.57.0.1:7443/v1/vms")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("an agent certificate used the user API: %d", resp.StatusCode)
	}
	noCert := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: tlsCfg.RootCAs, ServerName: "10.57.0.1"}, DialContext: c.dial}}
	resp, err = noCert.Post("https://10.57.0.1:7443/v1/agent/register?ttl=3s", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("agent API without a certificate: %d", resp.StatusCode)
	}
}
