package storetest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/pki"
	"github.com/shoalvm/shoal/internal/store"
)

// ExternalEtcd is Debian's etcd server (package etcd-server) run by a
// test on loopback as a production cluster runs: TLS, and only clients
// with a certificate of its CA (--client-cert-auth).
type ExternalEtcd struct {
	Endpoint string         // https://127.0.0.1:PORT
	TLS      store.TLSFiles // the CA, and a client certificate with its key
	log      *syncBuffer
}

// Log is what etcd printed so far.
func (e *ExternalEtcd) Log() string { return e.log.String() }

// StartExternalEtcd starts /usr/bin/etcd in a temp dir, with a fresh CA,
// its server certificate and a client certificate, and kills it when the
// test ends. prefix, if given, runs it through a command, e.g. "ip",
// "netns", "exec", NS to start it in a network namespace.
func StartExternalEtcd(t testing.TB, prefix ...string) *ExternalEtcd {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		t.Fatal("etcd not found: 'make deps' installs the package etcd-server")
	}
	dir := t.TempDir()
	hosts := []string{"127.0.0.1", "localhost"}
	srvDir, cliDir := filepath.Join(dir, "server"), filepath.Join(dir, "client")
	if _, _, err := pki.Ensure(srvDir, hosts); err != nil {
		t.Fatal(err)
	}
	b, err := pki.ServerBundle(srvDir, hosts) // its certificate serves as client, too
	if err != nil {
		t.Fatal(err)
	}
	e := &ExternalEtcd{
		Endpoint: fmt.Sprintf("https://127.0.0.1:%d", FreePort(t)),
		TLS: store.TLSFiles{CACert: filepath.Join(srvDir, pki.CACert),
			Cert: filepath.Join(cliDir, "client.crt"), Key: filepath.Join(cliDir, "client.key")},
		log: &syncBuffer{},
	}
	if err := os.MkdirAll(cliDir, 0o700); err != nil {
		t.Fatal(err)
	}
	for path, data := range map[string][]byte{e.TLS.Cert: b.Cert, e.TLS.Key: b.Key} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	peer := fmt.Sprintf("http://127.0.0.1:%d", FreePort(t))
	args := append(append([]string{}, prefix...), bin, "--name", "ext", "--data-dir", filepath.Join(dir, "data"), "--logger", "zap",
		"--listen-client-urls", e.Endpoint, "--advertise-client-urls", e.Endpoint,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", "ext="+peer,
		"--client-cert-auth", "--trusted-ca-file", e.TLS.CACert,
		"--cert-file", filepath.Join(srvDir, pki.ServerCert), "--key-file", filepath.Join(srvDir, pki.ServerKey))
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = e.log, e.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
	})
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(e.Log(), "serving client traffic"); {
		if time.Now().After(deadline) {
			t.Fatalf("etcd did not start within 30s:\n%s", e.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return e
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
