package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/shoalvm/shoal/internal/atomicfile"
)

// Organizational units that say what a certificate's holder is.
const (
	OUAgent  = "shoal-agent"
	OUServer = "shoal-server"
)

// AgentDN returns the distinguished name of host's agent certificate as
// GnuTLS, and so QEMU's TLS authorization, may write it: in the order of
// the certificate ("OU=shoal-agent,CN=host1", GnuTLS 3.7), and in the
// reverse order of RFC 4514 (later versions).
func AgentDN(host string) []string {
	return []string{"OU=" + OUAgent + ",CN=" + host, "CN=" + host + ",OU=" + OUAgent}
}

// Files of an agent's PKI directory.
const (
	AgentCert = "agent.crt"
	AgentKey  = "agent.key"
)

// CAHash returns a short fingerprint of a CA certificate (PEM), carried in
// join tokens so that a joining agent can tell the real server.
func CAHash(caPEM []byte) (string, error) {
	b, _ := pem.Decode(caPEM)
	if b == nil {
		return "", errors.New("CA certificate is not PEM")
	}
	sum := sha256.Sum256(b.Bytes)
	return hex.EncodeToString(sum[:16]), nil
}

// NewCSR makes an agent key in dir and returns a certificate request for
// host, valid for the given addresses.
func NewCSR(dir, host string, addrs []string) ([]byte, error) {
	key, err := newKey(dir, AgentKey)
	if err != nil {
		return nil, err
	}
	return newCSR(key, host, OUAgent, addrs)
}

// newKey makes a key and writes it to file in dir (mode 0600).
func newKey(dir, file string) (*ecdsa.PrivateKey, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pki dir: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("key: %w", err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode key: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, file), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		return nil, fmt.Errorf("write key: %w", err)
	}
	return key, nil
}

// newCSR returns a certificate request of key for host in role ou.
func newCSR(key crypto.Signer, host, ou string, addrs []string) ([]byte, error) {
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: host, OrganizationalUnit: []string{ou}}}
	addHosts(&tmpl.DNSNames, &tmpl.IPAddresses, addrs)
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, fmt.Errorf("certificate request: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// CheckCSR parses a certificate request and checks its signature.
func CheckCSR(csrPEM []byte) error {
	_, err := parseCSR(csrPEM)
	return err
}

func parseCSR(csrPEM []byte) (*x509.CertificateRequest, error) {
	b, _ := pem.Decode(csrPEM)
	if b == nil || b.Type != "CERTIFICATE REQUEST" {
		return nil, errors.New("certificate request is not PEM")
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse certificate request: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("certificate request signature: %w", err)
	}
	return csr, nil
}

// AgentCertLifetime is how long a host's certificate is valid. Its agent
// renews it over mutual TLS once a third of that has passed (see
// RenewDue), so a host whose agent is stopped for longer must join again
// with a new token; and a certificate taken from a host is of use for
// this long at most, unless the host is removed, which revokes it at once.
const AgentCertLifetime = 72 * time.Hour

// Backdate is how far before its issue a certificate's validity starts,
// for clocks that run behind.
const Backdate = time.Hour

// IssuedAt returns when a certificate of this package was issued (to
// the second).
func IssuedAt(c *x509.Certificate) time.Time { return c.NotBefore.Add(Backdate) }

// IssuedBefore reports whether c was, or may have been, issued before t,
// given that IssuedAt is only to the second: a certificate of the same
// second as t counts as before.
func IssuedBefore(c *x509.Certificate, t time.Time) bool {
	return IssuedAt(c).Before(t.Truncate(time.Second).Add(time.Second))
}

// RenewDue reports whether a host's certificate c should be renewed at
// now: once a third of its life has passed, or if it has expired already
// (then renewal fails, and the host must join again). A certificate that
// lives longer than AgentCertLifetime (issued before it was introduced)
// is due at once.
func RenewDue(c *x509.Certificate, now time.Time) bool {
	life := c.NotAfter.Sub(IssuedAt(c))
	return life > AgentCertLifetime || now.After(IssuedAt(c).Add(life/3))
}

// SignAgent signs an agent's certificate request with the CA in dir. The
// server decides what the certificate says, whatever the request asks:
// it names host as an agent, for both client and server use (its own
// API, migration streams), valid only for the addresses given (the one
// the host joined from), never for a DNS name, which could be the
// server's. A host thus cannot obtain a certificate for another machine's
// address, and its role (OU) keeps it from passing as a server.
func SignAgent(dir string, csrPEM []byte, host string, addrs []net.IP) ([]byte, error) {
	return signHost(dir, csrPEM, host, OUAgent, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, addrs)
}

// signHost signs a request with the CA in dir as a certificate of host
// in role ou, for usage, valid for addrs only, for AgentCertLifetime.
func signHost(dir string, csrPEM []byte, host, ou string, usage []x509.ExtKeyUsage, addrs []net.IP) ([]byte, error) {
	now := time.Now()
	csr, err := parseCSR(csrPEM)
	if err != nil {
		return nil, err
	}
	ca, err := tls.LoadX509KeyPair(filepath.Join(dir, CACert), filepath.Join(dir, CAKey))
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	caCert, err := x509.ParseCertificate(ca.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("parse CA: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: host, OrganizationalUnit: []string{ou}},
		NotBefore:    now.Add(-Backdate),
		NotAfter:     now.Add(AgentCertLifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  usage,
		IPAddresses:  addrs,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, csr.PublicKey, ca.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("sign agent certificate: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// RequireRole returns a TLS check that the peer's (verified) certificate
// has the role ou and, if name is set, that name.
func RequireRole(ou, name string) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("peer sent no certificate")
		}
		c := cs.PeerCertificates[0]
		if len(c.Subject.OrganizationalUnit) == 0 || c.Subject.OrganizationalUnit[0] != ou || name != "" && c.Subject.CommonName != name {
			return fmt.Errorf("peer %q (%v) is not the %s %s of this cluster", c.Subject.CommonName, c.Subject.OrganizationalUnit, ou, name)
		}
		return nil
	}
}

// PeerRole returns the name and role (OU) of a verified TLS peer.
func PeerRole(state *tls.ConnectionState) (name, role string, ok bool) {
	if state == nil || len(state.VerifiedChains) == 0 || len(state.PeerCertificates) == 0 {
		return "", "", false
	}
	c := state.PeerCertificates[0]
	if len(c.Subject.OrganizationalUnit) == 0 {
		return c.Subject.CommonName, "", true
	}
	return c.Subject.CommonName, c.Subject.OrganizationalUnit[0], true
}

func addHosts(dns *[]string, ips *[]net.IP, hosts []string) {
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			*ips = append(*ips, ip)
		} else if h != "" {
			*dns = append(*dns, h)
		}
	}
}

// ClientConfig returns the TLS settings with which a server reaches hosts:
// its own certificate as client, and the cluster CA as the only root.
func ClientConfig(dir string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, ServerCert), filepath.Join(dir, ServerKey))
	if err != nil {
		return nil, fmt.Errorf("load server certificate: %w", err)
	}
	return peerConfig(dir, cert)
}

// AgentConfig returns an agent's TLS settings from its PKI dir: its
// certificate (as client to servers, and as server of its own API), and
// the cluster CA as the only root, also for the peers it accepts.
func AgentConfig(dir string) (*tls.Config, error) {
	cfg, _, err := AgentTLS(dir)
	return cfg, err
}

// AgentCertHolder holds the certificate of an agent's TLS settings (and
// of their clones), which Reload replaces while they are in use.
type AgentCertHolder struct {
	dir  string
	cert atomic.Pointer[tls.Certificate]
}

// AgentTLS is AgentConfig, with the holder that reloads its certificate
// once renewed.
func AgentTLS(dir string) (*tls.Config, *AgentCertHolder, error) {
	h := &AgentCertHolder{dir: dir}
	if err := h.Reload(); err != nil {
		return nil, nil, err
	}
	cfg, err := peerConfig(dir, *h.cert.Load())
	if err != nil {
		return nil, nil, err
	}
	cfg.Certificates = nil
	cfg.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return h.cert.Load(), nil }
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return h.cert.Load(), nil }
	return cfg, h, nil
}

// Reload reads the agent's certificate and key again from its dir.
func (h *AgentCertHolder) Reload() error {
	cert, err := tls.LoadX509KeyPair(filepath.Join(h.dir, AgentCert), filepath.Join(h.dir, AgentKey))
	if err != nil {
		return fmt.Errorf("load agent certificate: %w", err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return fmt.Errorf("parse agent certificate: %w", err)
		}
	}
	h.cert.Store(&cert)
	return nil
}

// Leaf returns the certificate in use.
func (h *AgentCertHolder) Leaf() *x509.Certificate { return h.cert.Load().Leaf }

// RenewCSR returns a certificate request for the agent's name with its
// key, to renew its certificate.
func (h *AgentCertHolder) RenewCSR() ([]byte, error) {
	c := h.cert.Load()
	tmpl := &x509.CertificateRequest{Subject: c.Leaf.Subject}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, c.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("certificate request: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// Install checks that certPEM is a certificate of the cluster CA for the
// agent's key, writes it in place of the old one and uses it from now on.
func (h *AgentCertHolder) Install(certPEM []byte) error {
	keyPEM, err := os.ReadFile(filepath.Join(h.dir, AgentKey))
	if err != nil {
		return fmt.Errorf("read agent key: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("the renewed certificate does not match the agent's key: %w", err)
	}
	caPEM, err := os.ReadFile(filepath.Join(h.dir, CACert))
	if err != nil {
		return fmt.Errorf("read CA: %w", err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return fmt.Errorf("parse the renewed certificate: %w", err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return fmt.Errorf("the renewed certificate is not the cluster CA's: %w", err)
	}
	if err := atomicfile.Write(filepath.Join(h.dir, AgentCert), certPEM, 0o644); err != nil {
		return fmt.Errorf("write agent certificate: %w", err)
	}
	cert.Leaf = leaf
	h.cert.Store(&cert)
	return nil
}

func peerConfig(dir string, cert tls.Certificate) (*tls.Config, error) {
	caPEM, err := os.ReadFile(filepath.Join(dir, CACert))
	if err != nil {
		return nil, fmt.Errorf("read CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("cluster CA does not parse")
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, ClientCAs: pool,
		ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}, nil
}
