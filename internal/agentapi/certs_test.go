package agentapi

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/pki"
	"github.com/shoalvm/shoal/internal/store/storetest"
)

// testCerts is the control plane's Certs over a CA dir, with a
// revocation time per host.
type testCerts struct {
	ca      string
	mu      sync.Mutex
	revoked map[string]time.Time
}

func (c *testCerts) Renew(host string, csrPEM []byte, addr net.IP) ([]byte, error) {
	return pki.SignAgent(c.ca, csrPEM, host, []net.IP{addr})
}

func (c *testCerts) SignMigration(host string, csrPEM []byte, addr net.IP) ([]byte, error) {
	return pki.SignMigration(c.ca, csrPEM, host, []net.IP{addr})
}

func (c *testCerts) Revoked(_ context.Context, host string, cert *x509.Certificate) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if at, ok := c.revoked[host]; ok && pki.IssuedBefore(cert, at) {
		return api.Errorf(api.ErrUnauthorized, "host %s was removed from the cluster", host)
	}
	return nil
}

// certsRig is an agent API served over mutual TLS by a cluster CA, and
// host1's agent, joined, with its TLS settings.
type certsRig struct {
	ca, agentDir string
	certPEM      []byte // host1's first certificate
	cfg          *tls.Config
	holder       *pki.AgentCertHolder
	certs        *testCerts
	url          string
}

func newCertsRig(t *testing.T) *certsRig {
	t.Helper()
	r := &certsRig{ca: t.TempDir(), agentDir: t.TempDir()}
	srvCert, caPEM, err := pki.Ensure(r.ca, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.NewCSR(r.agentDir, "host1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.certPEM, err = pki.SignAgent(r.ca, csr, "host1", []net.IP{net.IPv4(127, 0, 0, 1)}); err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{pki.AgentCert: r.certPEM, pki.CACert: caPEM} {
		if err := os.WriteFile(filepath.Join(r.agentDir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if r.cfg, r.holder, err = pki.AgentTLS(r.agentDir); err != nil {
		t.Fatal(err)
	}
	r.certs = &testCerts{ca: r.ca, revoked: map[string]time.Time{}}
	h := NewHandler(NewLocal(storetest.New(t), slog.New(slog.DiscardHandler)), t.TempDir(), slog.New(slog.DiscardHandler))
	h.Certs = r.certs
	srv := httptest.NewUnstartedServer(h)
	srvCfg, err := pki.ClientConfig(r.ca) // the cluster CA as the clients' too
	if err != nil {
		t.Fatal(err)
	}
	srvCfg.Certificates = []tls.Certificate{srvCert}
	srv.TLS = srvCfg
	srv.StartTLS()
	t.Cleanup(srv.Close)
	r.url = srv.URL
	return r
}

// remote is a client of the agent API with TLS settings cfg.
func (r *certsRig) remote(t *testing.T, cfg *tls.Config) *Remote {
	t.Helper()
	cp, err := NewRemote([]string{r.url}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cp
}

// TestRenewAndRevoke: an agent renews its certificate over mutual TLS
// and uses the new one at once, in every copy of its TLS settings; once
// its host is removed, its next call is refused.
func TestRenewAndRevoke(t *testing.T) {
	r := newCertsRig(t)
	cfg, holder, certs, agentDir, certPEM := r.cfg, r.holder, r.certs, r.agentDir, r.certPEM
	cp := r.remote(t, cfg.Clone())
	ctx := context.Background()

	// Renewal: a new certificate, for the same name, written and in use.
	first := holder.Leaf()
	time.Sleep(1100 * time.Millisecond) // certificates are to the second
	csr, err := holder.RenewCSR()
	if err != nil {
		t.Fatal(err)
	}
	renewed, err := cp.Renew(ctx, csr)
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Install(renewed); err != nil {
		t.Fatal(err)
	}
	now := holder.Leaf()
	if now.SerialNumber.Cmp(first.SerialNumber) == 0 || now.Subject.CommonName != "host1" || !pki.IssuedAt(first).Before(pki.IssuedAt(now)) {
		t.Fatalf("renewed certificate %v issued %v; was %v issued %v", now.Subject, pki.IssuedAt(now), first.Subject, pki.IssuedAt(first))
	}
	if b, _ := os.ReadFile(filepath.Join(agentDir, pki.AgentCert)); string(b) != string(renewed) {
		t.Error("the renewed certificate was not written")
	}
	if err := holder.Install([]byte("junk")); err == nil {
		t.Error("junk installed as the certificate")
	}

	// Removed between the two certificates: the old one is refused, the
	// renewed one (in use by the client's settings already) is not.
	certs.mu.Lock()
	certs.revoked["host1"] = pki.IssuedAt(now).Add(-500 * time.Millisecond)
	certs.mu.Unlock()
	fresh := r.remote(t, cfg.Clone()) // new connections
	if _, err := fresh.Network(ctx, "default"); err != nil && !api.IsNotFound(err) {
		t.Fatalf("the renewed certificate was refused: %v", err)
	}
	old := r.remote(t, oldCertConfig(t, cfg, certPEM, agentDir))
	if _, err := old.Network(ctx, "default"); !errors.Is(err, api.ErrUnauthorized) || !strings.Contains(err.Error(), "removed from the cluster") {
		t.Fatalf("the revoked certificate: %v", err)
	}
	// Removed now: the agent's next call is refused.
	certs.mu.Lock()
	certs.revoked["host1"] = time.Now()
	certs.mu.Unlock()
	if err := fresh.Register(ctx, api.Host{Name: "host1"}, 3*time.Second); !errors.Is(err, api.ErrUnauthorized) {
		t.Fatalf("a removed host registered: %v", err)
	}
}

// oldCertConfig returns cfg with the certificate certPEM (and the key of
// dir) instead of the one in use.
func oldCertConfig(t *testing.T, cfg *tls.Config, certPEM []byte, dir string) *tls.Config {
	t.Helper()
	key, err := os.ReadFile(filepath.Join(dir, pki.AgentKey))
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.X509KeyPair(certPEM, key)
	if err != nil {
		t.Fatal(err)
	}
	out := cfg.Clone()
	out.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &c, nil }
	return out
}

// TestMigrationCertIsNoAgent: a host's migration certificate (which its
// QEMU processes hold) is signed on request, and refused by the agent
// API: a QEMU taken over cannot pose as its host with it.
func TestMigrationCertIsNoAgent(t *testing.T) {
	r := newCertsRig(t)
	cfg, agentDir := r.cfg, r.agentDir
	cp := r.remote(t, cfg)
	ctx := context.Background()
	mcsr, err := pki.MigrationCSR(agentDir, "host1")
	if err != nil {
		t.Fatal(err)
	}
	mcert, err := cp.RenewMigration(ctx, mcsr)
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.InstallMigration(agentDir, mcert); err != nil {
		t.Fatal(err)
	}
	// With the migration certificate as its client certificate.
	pair, err := tls.LoadX509KeyPair(filepath.Join(agentDir, pki.MigrationCert), filepath.Join(agentDir, pki.MigrationKey))
	if err != nil {
		t.Fatal(err)
	}
	qcfg := cfg.Clone()
	qcfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil }
	q := r.remote(t, qcfg)
	if err := q.Register(ctx, api.Host{Name: "host1"}, 3*time.Second); err == nil {
		t.Fatal("the agent API took a migration certificate as the host's")
	}
	if _, err := q.RenewMigration(ctx, mcsr); err == nil {
		t.Fatal("a migration certificate renewed itself")
	}
}
