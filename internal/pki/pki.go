// Package pki makes and loads Shoal's certificate authority and the API
// server's certificate. The server creates both on its first start.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

// Files of a PKI directory.
const (
	CACert     = "ca.crt"
	CAKey      = "ca.key"
	ServerCert = "server.crt"
	ServerKey  = "server.key"
)

// ServerCN is the common name of every server replica's certificate. No
// host can have it (host names hold no space), so the embedded etcd
// admits only certificates that carry it.
const ServerCN = "shoal server"

// Ensure creates the CA and a server certificate for the given names and
// addresses in dir if they do not exist yet, and returns the server's TLS
// certificate and the CA in PEM.
func Ensure(dir string, hosts []string) (tls.Certificate, []byte, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("pki dir: %w", err)
	}
	caCertPath, caKeyPath := filepath.Join(dir, CACert), filepath.Join(dir, CAKey)
	if _, err := os.Stat(caCertPath); os.IsNotExist(err) {
		if err := newCA(caCertPath, caKeyPath); err != nil {
			return tls.Certificate{}, nil, err
		}
	}
	caPEM, err := os.ReadFile(caCertPath)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("read CA: %w", err)
	}
	ca, err := tls.LoadX509KeyPair(caCertPath, caKeyPath)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("load CA: %w", err)
	}
	sc, sk := filepath.Join(dir, ServerCert), filepath.Join(dir, ServerKey)
	if cert, err := tls.LoadX509KeyPair(sc, sk); err == nil && covers(cert, hosts) {
		return withCA(cert, ca), caPEM, nil
	}
	if err := newLeaf(ca, sc, sk, hosts); err != nil {
		return tls.Certificate{}, nil, err
	}
	cert, err := tls.LoadX509KeyPair(sc, sk)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("load server certificate: %w", err)
	}
	return withCA(cert, ca), caPEM, nil
}

func covers(cert tls.Certificate, hosts []string) bool {
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil || time.Until(leaf.NotAfter) < 30*24*time.Hour ||
		len(leaf.Subject.OrganizationalUnit) == 0 || leaf.Subject.OrganizationalUnit[0] != OUServer {
		return false
	}
	for _, h := range hosts {
		if leaf.VerifyHostname(h) != nil {
			return false
		}
	}
	return true
}

func newCA(certPath, keyPath string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "Shoal cluster CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("CA certificate: %w", err)
	}
	return writePair(certPath, keyPath, der, key)
}

func newLeaf(ca tls.Certificate, certPath, keyPath string, hosts []string) error {
	der, key, err := serverLeaf(ca, hosts)
	if err != nil {
		return err
	}
	return writePair(certPath, keyPath, der, key)
}

// serverLeaf makes a server certificate (DER) for hosts, signed by ca.
func serverLeaf(ca tls.Certificate, hosts []string) ([]byte, *ecdsa.PrivateKey, error) {
	caCert, err := x509.ParseCertificate(ca.Certificate[0])
	if err != nil {
		return nil, nil, fmt.Errorf("parse CA: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("server key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: ServerCN, OrganizationalUnit: []string{OUServer}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(2, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	addHosts(&tmpl.DNSNames, &tmpl.IPAddresses, hosts)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, ca.PrivateKey)
	if err != nil {
		return nil, nil, fmt.Errorf("server certificate: %w", err)
	}
	return der, key, nil
}

func writePair(certPath, keyPath string, der []byte, key *ecdsa.PrivateKey) error {
	kp, err := keyPEM(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(keyPath, kp, 0o600); err != nil {
		return fmt.Errorf("write key: %w", err)
	}
	if err := os.WriteFile(certPath, certPEM(der), 0o644); err != nil {
		return fmt.Errorf("write certificate: %w", err)
	}
	return nil
}

func certPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func keyPEM(key *ecdsa.PrivateKey) ([]byte, error) {
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}

// withCA appends the CA to a certificate's chain, so that a peer that
// pins the CA (a joining agent) sees it.
func withCA(cert, ca tls.Certificate) tls.Certificate {
	cert.Certificate = append(cert.Certificate[:len(cert.Certificate):len(cert.Certificate)], ca.Certificate[0])
	return cert
}
