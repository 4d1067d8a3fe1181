package pki

import (
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
	"time"
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
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pki dir: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("agent key: %w", err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode key: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, AgentKey), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		return nil, fmt.Errorf("write key: %w", err)
	}
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: host, OrganizationalUnit: []string{OUAgent}}}
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

// SignAgent signs an agent's certificate request with the CA in dir. The
// server decides what the certificate says, whatever the request asks:
// it names host as an agent, for both client and server use (its own
// API, migration streams), valid only for the addresses given (the one
// the host joined from), never for a DNS name, which could be the
// server's. A host thus cannot obtain a certificate for another machine's
// address, and its role (OU) keeps it from passing as a server.
func SignAgent(dir string, csrPEM []byte, host string, addrs []net.IP) ([]byte, error) {
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
		Subject:      pkix.Name{CommonName: host, OrganizationalUnit: []string{OUAgent}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(2, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
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
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, AgentCert), filepath.Join(dir, AgentKey))
	if err != nil {
		return nil, fmt.Errorf("load agent certificate: %w", err)
	}
	return peerConfig(dir, cert)
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
