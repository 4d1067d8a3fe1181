package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestLabAcceptance is the cluster issue's check, with the real binary:
// in a fresh lab of 3 hosts, 6 VMs created without --host spread 2/2/2
// and all answer the client; killing and restarting one agent keeps its
// VMs running with their count going on, while host list shows the host
// down, then up; lab up and down twice leave nothing behind.
func TestLabAcceptance(t *testing.T) {
	requireRoot(t)
	requireNoLab(t)
	ctx, log := context.Background(), testLog(t)
	base := t.TempDir()
	bin := buildShoal(t, base)
	dir := filepath.Join(base, "lab")
	t.Cleanup(func() { _ = Down(ctx, log, dir) })
	s, err := Up(ctx, log, Options{Dir: dir, Hosts: 3, Binary: bin})
	if err != nil {
		t.Fatal(err)
	}
	env := labEnv(s.Layout())
	shoal := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Env = env
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		if err := cmd.Run(); err != nil {
			t.Fatalf("shoal %s: %v\n%s%s", strings.Join(args, " "), err, out.String(), errOut.String())
		}
		return out.String()
	}
	type vmView struct{ Name, Host, IP, State string }
	get := func(ip string) (string, bool) {
		var out bytes.Buffer
		code, err := Exec(ctx, dir, "client", []string{"wget", "-T", "2", "-qO-", "http://" + ip + "/"}, Stdio{Out: &out})
		return out.String(), err == nil && code == 0 && strings.HasPrefix(out.String(), "boot=")
	}
	field := func(answer, key string) string {
		for _, f := range strings.Fields(answer) {
			if k, v, _ := strings.Cut(f, "="); k == key {
				return v
			}
		}
		return ""
	}

	perHost := map[string][]vmView{}
	var vms []vmView
	for i := 1; i <= 6; i++ {
		shoal("vm", "create", fmt.Sprintf("web%d", i), "--image", "tiny", "--memory", "128M", "--start")
		var v vmView
		if err := json.Unmarshal([]byte(shoal("vm", "show", fmt.Sprintf("web%d", i), "-o", "json")), &v); err != nil {
			t.Fatal(err)
		}
		vms = append(vms, v)
		perHost[v.Host] = append(perHost[v.Host], v)
	}
	for _, h := range []string{"host1", "host2", "host3"} {
		if len(perHost[h]) != 2 {
			t.Fatalf("6 VMs did not spread 2/2/2: %v", perHost)
		}
	}
	first := map[string]string{}
	deadline := time.Now().Add(3 * time.Minute)
	for _, v := range vms {
		for first[v.Name] == "" && time.Now().Before(deadline) {
			if a, ok := get(v.IP); ok {
				first[v.Name] = a
			} else {
				time.Sleep(500 * time.Millisecond)
			}
		}
		if first[v.Name] == "" {
			t.Fatalf("the client never reached %s at %s", v.Name, v.IP)
		}
	}

	hostState := func(name string) string {
		var hosts []struct{ Name, State string }
		_ = json.Unmarshal([]byte(shoal("host", "list", "-o", "json")), &hosts)
		for _, h := range hosts {
			if h.Name == name {
				return h.State
			}
		}
		return ""
	}
	waitState := func(name, want string) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for hostState(name) != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s never became %s", name, want)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	agent := mustLoad(t, dir).proc("agent-host2").Pid
	if err := syscall.Kill(agent, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitState("host2", "down")
	for _, v := range perHost["host2"] {
		if a, ok := get(v.IP); !ok || field(a, "boot") != field(first[v.Name], "boot") {
			t.Fatalf("%s while its agent is dead: %q", v.Name, a)
		}
	}
	if err := Heal(ctx, log, dir, "host2"); err != nil {
		t.Fatal(err)
	}
	waitState("host2", "up")
	for _, v := range perHost["host2"] {
		a, ok := get(v.IP)
		if !ok || field(a, "boot") != field(first[v.Name], "boot") || field(a, "count") != "3" {
			t.Fatalf("%s after its agent came back: %q (first %q)", v.Name, a, first[v.Name])
		}
	}

	var pids []int
	for _, p := range mustLoad(t, dir).Procs {
		pids = append(pids, p.Pid)
	}
	if err := Down(ctx, log, dir); err != nil {
		t.Fatal(err)
	}
	requireGone(t, dir, pids)
	// Twice more, to be sure nothing accumulates.
	for i := 0; i < 2; i++ {
		s, err := Up(ctx, log, Options{Dir: dir, Hosts: 2, Binary: bin})
		if err != nil {
			t.Fatal(err)
		}
		pids = pids[:0]
		for _, p := range s.Procs {
			pids = append(pids, p.Pid)
		}
		if err := Down(ctx, log, dir); err != nil {
			t.Fatal(err)
		}
		requireGone(t, dir, pids)
	}
}
