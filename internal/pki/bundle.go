package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Bundle is what a new server replica gets from the cluster: the CA's
// certificate AND key, and a server certificate for its addresses.
//
// Replicas share one CA, so that agent certificates, server certificates
// and the CA hash in join tokens are valid on every replica. The CA key
// therefore leaves a server, but only over the TLS channel that the joiner
// pins with the CA hash of its join token, and only to holders of a valid
// join token (see server's POST /v1/cluster/servers/join).
type Bundle struct {
	CACert []byte `json:"ca_cert"` // PEM
	CAKey  []byte `json:"ca_key"`  // PEM
	Cert   []byte `json:"cert"`    // PEM: the replica's server certificate
	Key    []byte `json:"key"`     // PEM: its key
}

// ServerBundle issues a server certificate for hosts (names and
// addresses) with the CA in dir, and returns it with that CA.
func ServerBundle(dir string, hosts []string) (Bundle, error) {
	caCertPath, caKeyPath := filepath.Join(dir, CACert), filepath.Join(dir, CAKey)
	ca, err := tls.LoadX509KeyPair(caCertPath, caKeyPath)
	if err != nil {
		return Bundle{}, fmt.Errorf("load CA: %w", err)
	}
	der, key, err := serverLeaf(ca, hosts)
	if err != nil {
		return Bundle{}, err
	}
	kp, err := keyPEM(key)
	if err != nil {
		return Bundle{}, err
	}
	b := Bundle{Cert: certPEM(der), Key: kp}
	if b.CACert, err = os.ReadFile(caCertPath); err != nil {
		return Bundle{}, fmt.Errorf("read CA: %w", err)
	}
	if b.CAKey, err = os.ReadFile(caKeyPath); err != nil {
		return Bundle{}, fmt.Errorf("read CA key: %w", err)
	}
	return b, nil
}

// InstallBundle checks that b's keys match their certificates and that
// its server certificate is the CA's, then writes it into dir, replacing
// any CA and server certificate there.
func InstallBundle(dir string, b Bundle) error {
	ca, err := tls.X509KeyPair(b.CACert, b.CAKey)
	if err != nil {
		return fmt.Errorf("the cluster CA does not load: %w", err)
	}
	caCert, err := x509.ParseCertificate(ca.Certificate[0])
	if err != nil || !caCert.IsCA {
		return errors.New("the cluster CA is not a CA certificate")
	}
	leaf, err := tls.X509KeyPair(b.Cert, b.Key)
	if err != nil {
		return fmt.Errorf("the server certificate does not load: %w", err)
	}
	lc, err := x509.ParseCertificate(leaf.Certificate[0])
	if err != nil {
		return fmt.Errorf("parse the server certificate: %w", err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(caCert)
	if _, err := lc.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: time.Now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return fmt.Errorf("the server certificate is not the cluster CA's: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("pki dir: %w", err)
	}
	for _, f := range []struct {
		name string
		b    []byte
		mode os.FileMode
	}{{CAKey, b.CAKey, 0o600}, {CACert, b.CACert, 0o644}, {ServerKey, b.Key, 0o600}, {ServerCert, b.Cert, 0o644}} {
		p := filepath.Join(dir, f.name)
		tmp := p + ".tmp"
		_ = os.Remove(tmp)
		if err := os.WriteFile(tmp, f.b, f.mode); err != nil {
			return fmt.Errorf("write %s: %w", p, err)
		}
		if err := os.Rename(tmp, p); err != nil {
			return fmt.Errorf("write %s: %w", p, err)
		}
	}
	return nil
}
