package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/san"
)

// storageServer is a 'shoal storage-server' run by a test beside its node.
type storageServer struct {
	l    *testNode
	data string // its --data-dir
	log  string // its output
	cmd  *exec.Cmd
}

// startStorage runs 'shoal storage-server' in the node's namespace with
// args and waits until it says it is up.
func (l *testNode) startStorage(data string, args ...string) *storageServer {
	l.t.Helper()
	s := &storageServer{l: l, data: data, log: filepath.Join(l.dir, "storage.log")}
	f, err := os.OpenFile(s.log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		l.t.Fatal(err)
	}
	defer f.Close()
	argv := append([]string{"netns", "exec", l.ns, shoalBin, "storage-server", "--data-dir", data, "-v"}, args...)
	s.cmd = exec.Command("ip", argv...)
	s.cmd.Stdout, s.cmd.Stderr = f, f
	if err := s.cmd.Start(); err != nil {
		l.t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(exited) }()
	l.t.Cleanup(func() {
		s.kill()
		if b, _ := os.ReadFile(s.log); l.t.Failed() || os.Getenv("SHOAL_TEST_LOGS") != "" {
			l.t.Logf("storage-server log:\n%s", b)
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(s.log)
		if strings.Contains(string(b), "storage server nas is up") {
			return s
		}
		select {
		case <-exited:
			l.t.Fatalf("storage-server exited:\n%s", b)
		case <-time.After(50 * time.Millisecond):
		}
	}
	b, _ := os.ReadFile(s.log)
	l.t.Fatalf("storage-server did not come up:\n%s", b)
	return nil
}

// kill ends it with SIGKILL, as a crash would.
func (s *storageServer) kill() {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Signal(syscall.SIGKILL)
		for i := 0; i < 100 && s.cmd.ProcessState == nil; i++ {
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// tgtdPid is the pid of its tgtd, from the pidfile the SAN keeps.
func (s *storageServer) tgtdPid() int {
	b, _ := os.ReadFile(filepath.Join(s.data, "tgtd", "tgtd.sock.0.pid"))
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// targets is what tgtadm shows of its tgtd's targets (as an admin would
// look at them).
func (s *storageServer) targets() string {
	cmd := exec.Command("ip", "netns", "exec", s.l.ns, "tgtadm", "-C", "0", "--lld", "iscsi", "--mode", "target", "--op", "show")
	cmd.Env = append(os.Environ(), "TGT_IPC_SOCKET="+filepath.Join(s.data, "tgtd", "tgtd.sock"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "tgtadm: " + err.Error() + ": " + string(out)
	}
	return string(out)
}

// waitTarget waits until tgtd has the target of volume id again.
func (s *storageServer) waitTarget(id, when string) {
	s.l.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(s.targets(), san.TargetName(id)) {
		if time.Now().After(deadline) {
			s.l.t.Fatalf("the volume's target is not back %s:\n%s", when, s.targets())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// mustFail runs a CLI call that must fail with one line holding want.
func (l *testNode) mustFail(want string, args ...string) {
	l.t.Helper()
	out, errOut, err := l.shoal(args...)
	msg := strings.TrimSpace(errOut)
	if err == nil || strings.Count(msg, "\n") != 0 || !strings.Contains(msg, want) {
		l.t.Errorf("%v: exit %v, stdout %q, stderr %q; want one line with %q", args, err, out, msg, want)
	}
}

// pool waits until 'pool list' shows pool name reached by host, and
// returns it.
func (l *testNode) pool(name, host string) api.Pool {
	l.t.Helper()
	var pools []api.Pool
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		must(l.t, json.Unmarshal([]byte(l.mustShoal("pool", "list", "-o", "json")), &pools))
		for _, p := range pools {
			if p.Name == name && len(p.Hosts) > 0 && p.Hosts[0] == host && p.SizeBytes > 0 {
				return p
			}
		}
	}
	l.t.Fatalf("pool %s never showed with host %s: %+v", name, host, pools)
	return api.Pool{}
}

// TestIntegrationStorageServer joins a storage server to a one-node
// cluster and uses its SAN as a user would: pool create --server, a
// volume made, grown and deleted as a LUN file and its target, bad input
// refused in one line, and a kill -9 of the storage server after which
// the volume's target is back.
func TestIntegrationStorageServer(t *testing.T) {
	l := newLab(t)
	for _, tool := range []string{"tgtd", "tgtadm"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing: run 'make deps'", tool)
		}
	}
	l.start()
	sanDir, data := filepath.Join(l.dir, "san"), filepath.Join(l.dir, "storage")
	token := strings.TrimSpace(l.mustShoal("cluster", "token"))
	st := l.startStorage(data, "--join", "https://127.0.0.1:7443", "--token", token, "--name", "nas",
		"--dir", sanDir, "--listen", "127.0.0.1:3260")

	var hosts []api.Host
	must(t, json.Unmarshal([]byte(l.mustShoal("host", "list", "-o", "json")), &hosts))
	var nas *api.Host
	for i := range hosts {
		if hosts[i].Name == "nas" {
			nas = &hosts[i]
		}
	}
	if nas == nil || nas.Role != api.HostRoleStorage || nas.Portal != "127.0.0.1:3260" || nas.State != api.HostUp {
		t.Fatalf("the storage server's host record: %+v", nas)
	}
	if out := l.mustShoal("host", "show", "nas"); !strings.Contains(out, "storage server (runs no VM), iSCSI portal 127.0.0.1:3260") {
		t.Errorf("host show of the storage server: %q", out)
	}
	l.mustShoal("pool", "create", "san", "--type", "iscsi", "--server", "nas")
	l.mustFail(`storage server nas serves pool "san" already`, "pool", "create", "san2", "--type", "iscsi", "--server", "nas")
	p := l.pool("san", "nas")
	if p.Type != api.PoolISCSI || !p.Shared || p.FreeBytes <= 0 || p.FreeBytes > p.SizeBytes {
		t.Errorf("pool san: %+v", p)
	}

	var v api.Volume
	must(t, json.Unmarshal([]byte(l.mustShoal("volume", "create", "v1", "--size", "64M", "--pool", "san", "-o", "json")), &v))
	if v.State != api.VolumeReady || v.Host != "nas" || v.Pool != "san" {
		t.Fatalf("volume create: %+v", v)
	}
	file := filepath.Join(sanDir, "vol-"+v.ID+".img")
	if fi, err := os.Stat(file); err != nil || fi.Size() != 64<<20 {
		t.Fatalf("the LUN's file: %v %v", fi, err)
	}
	if ts := st.targets(); !strings.Contains(ts, san.TargetName(v.ID)) {
		t.Fatalf("no target for the volume:\n%s", ts)
	}
	p = l.pool("san", "nas")
	l.mustFail(fmt.Sprintf(`pool "san" has %s free (on nas): a volume of 100T does not fit`, api.FormatSize(p.FreeBytes)),
		"volume", "create", "huge", "--size", "100T", "--pool", "san")
	l.mustFail(`pool "san" is served by storage server nas`, "volume", "create", "v2", "--size", "1M", "--pool", "san", "--host", "other")
	if out := l.mustShoal("volume", "list"); strings.Contains(out, "huge") || strings.Contains(out, "v2") {
		t.Errorf("a refused volume is listed: %q", out)
	}

	if out := l.mustShoal("volume", "resize", "v1", "--size", "128M"); !strings.Contains(out, "volume v1 is 128M") {
		t.Errorf("resize: %q", out)
	}
	if fi, err := os.Stat(file); err != nil || fi.Size() != 128<<20 {
		t.Fatalf("the LUN's file after resize: %v %v", fi, err)
	}

	// kill -9: tgtd dies with it; started again, the target is back.
	tgtd := st.tgtdPid()
	if tgtd == 0 {
		t.Fatal("no tgtd pidfile")
	}
	st.kill()
	for i := 0; i < 100 && syscall.Kill(tgtd, 0) == nil; i++ {
		time.Sleep(50 * time.Millisecond)
	}
	if syscall.Kill(tgtd, 0) == nil {
		t.Fatalf("tgtd %d outlived its storage server", tgtd)
	}
	st = l.startStorage(data, "--name", "nas", "--dir", sanDir, "--listen", "127.0.0.1:3260")
	st.waitTarget(v.ID, "after the storage server's restart")
	if v := l.volume("v1"); v.State != api.VolumeReady || v.SizeBytes != 128<<20 {
		t.Errorf("after the restart: %+v", v)
	}

	// tgtd alone dies: the storage server starts it again and rebuilds.
	tgtd = st.tgtdPid()
	must(t, syscall.Kill(tgtd, syscall.SIGKILL))
	deadline := time.Now().Add(20 * time.Second)
	for st.tgtdPid() == tgtd && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	st.waitTarget(v.ID, "after tgtd's death")

	l.mustShoal("volume", "delete", "v1")
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Errorf("the deleted volume's file: %v", err)
	}
	if ts := st.targets(); strings.Contains(ts, san.TargetName(v.ID)) {
		t.Errorf("the deleted volume's target is still there:\n%s", ts)
	}
}

func (l *testNode) volume(name string) api.Volume {
	l.t.Helper()
	var v api.Volume
	must(l.t, json.Unmarshal([]byte(l.mustShoal("volume", "show", name, "-o", "json")), &v))
	return v
}
