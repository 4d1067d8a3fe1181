package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/store/storetest"
)

// TestIntegrationExternalEtcd runs Shoal against Debian's etcd server
// instead of the embedded member: state lives there and survives restarts.
func TestIntegrationExternalEtcd(t *testing.T) {
	l := newLab(t)
	etcdBin, err := exec.LookPath("etcd")
	if err != nil {
		t.Fatal("etcd not found: apt-get install etcd-server")
	}
	var logBuf bytes.Buffer
	etcd := exec.Command("ip", "netns", "exec", l.ns, etcdBin, "--name", "ext",
		"--data-dir", filepath.Join(l.dir, "ext-etcd"),
		"--listen-client-urls", "http://127.0.0.1:23790", "--advertise-client-urls", "http://127.0.0.1:23790",
		"--listen-peer-urls", "http://127.0.0.1:23800", "--initial-advertise-peer-urls", "http://127.0.0.1:23800",
		"--initial-cluster", "ext=http://127.0.0.1:23800")
	etcd.Stdout, etcd.Stderr = &logBuf, &logBuf
	if err := etcd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = etcd.Process.Signal(syscall.SIGKILL)
		_ = etcd.Wait()
	})
	flags := []string{"--etcd-endpoints", "http://127.0.0.1:23790"}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := exec.Command("ip", "netns", "exec", l.ns, "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/23790").CombinedOutput(); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("external etcd did not start:\n%s", logBuf.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	l.startWith(flags)
	l.mustShoal("vm", "create", "ext1", "--image", "tiny", "--start")
	vm := l.vm("ext1")
	l.waitServing(vm.IP, 90*time.Second)
	l.kill()
	if _, err := os.Stat(filepath.Join(l.dir, "data", "etcd")); !os.IsNotExist(err) {
		t.Fatal("an embedded etcd data dir was made although --etcd-endpoints was given")
	}
	l.startWith(flags)
	if v := l.vm("ext1"); v.State != api.StateRunning || v.IP != vm.IP {
		t.Fatalf("after restart against the same etcd: %+v", v)
	}
	l.mustShoal("vm", "delete", "--force", "ext1")
}

// TestIntegrationExternalEtcdTLS runs Shoal against Debian's etcd as a
// production cluster runs it: TLS, and client certificates required.
// Without its client certificate Shoal is refused, and says so.
func TestIntegrationExternalEtcdTLS(t *testing.T) {
	l := newLab(t)
	e := storetest.StartExternalEtcd(t, "ip", "netns", "exec", l.ns)
	flags := []string{"--etcd-endpoints", e.Endpoint, "--etcd-cacert", e.TLS.CACert}
	if out := l.startFails(flags...); !strings.Contains(out, "etcd at ["+e.Endpoint+"] does not answer (over TLS: check") {
		t.Fatalf("shoal up without the client certificate:\n%s", out)
	}
	l.startWith(append(flags, "--etcd-cert", e.TLS.Cert, "--etcd-key", e.TLS.Key))
	l.mustShoal("vm", "create", "tls1", "--image", "tiny", "--start")
	l.waitServing(l.vm("tls1").IP, 90*time.Second)
	var cs api.ClusterStatus
	if err := json.Unmarshal([]byte(l.mustShoal("cluster", "status", "-o", "json")), &cs); err != nil || len(cs.Members) != 1 || cs.Members[0].Endpoint != e.Endpoint {
		t.Fatalf("cluster status: %+v, %v", cs, err)
	}
	l.mustShoal("vm", "delete", "--force", "tls1")
}
