package pki

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/shoalvm/shoal/internal/atomicfile"
)

// OUMigration is the role of a host's migration certificate, the one its
// QEMU processes load to take an encrypted migration stream as its
// target. It is good for nothing else: the agent API, the hosts' own
// APIs and their links to one another admit only other roles, so a QEMU
// taken over by its guest, which holds this key once it has loaded it,
// cannot pose as its host.
const OUMigration = "shoal-migration"

// Files of a host's migration certificate in its PKI dir.
const (
	MigrationCert = "migration.crt"
	MigrationKey  = "migration.key"
)

// SignMigration signs a host's migration certificate request with the CA
// in dir: the role OUMigration, server use only, host's name, the
// addresses given (the one it called from), for AgentCertLifetime.
func SignMigration(dir string, csrPEM []byte, host string, addrs []net.IP) ([]byte, error) {
	return signHost(dir, csrPEM, host, OUMigration, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, addrs)
}

// MigrationCSR returns a request for host's migration certificate, with
// the migration key in dir (made now if there is none).
func MigrationCSR(dir, host string) ([]byte, error) {
	if b, err := os.ReadFile(filepath.Join(dir, MigrationKey)); err == nil {
		if blk, _ := pem.Decode(b); blk != nil {
			if key, err := x509.ParseECPrivateKey(blk.Bytes); err == nil {
				return newCSR(key, host, OUMigration, nil)
			}
		}
	}
	key, err := newKey(dir, MigrationKey)
	if err != nil {
		return nil, err
	}
	return newCSR(key, host, OUMigration, nil)
}

// MigrationDue reports whether the migration certificate in dir should
// be (re)issued at now: it is missing, does not match its key, or is due
// for renewal (RenewDue).
func MigrationDue(dir string, now time.Time) bool {
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, MigrationCert), filepath.Join(dir, MigrationKey))
	if err != nil {
		return true
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	return err != nil || RenewDue(leaf, now)
}

// InstallMigration checks that certPEM is a migration certificate of the
// cluster CA in dir for the migration key there, and writes it.
func InstallMigration(dir string, certPEM []byte) error {
	pair, err := tls.X509KeyPair(certPEM, mustRead(filepath.Join(dir, MigrationKey)))
	if err != nil {
		return fmt.Errorf("the migration certificate does not match its key: %w", err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return fmt.Errorf("parse the migration certificate: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(mustRead(filepath.Join(dir, CACert))) {
		return errors.New("the cluster CA does not load")
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return fmt.Errorf("the migration certificate is not the cluster CA's: %w", err)
	}
	if len(leaf.Subject.OrganizationalUnit) == 0 || leaf.Subject.OrganizationalUnit[0] != OUMigration {
		return fmt.Errorf("the migration certificate has the role %v, not %s", leaf.Subject.OrganizationalUnit, OUMigration)
	}
	if err := atomicfile.Write(filepath.Join(dir, MigrationCert), certPEM, 0o644); err != nil {
		return fmt.Errorf("write the migration certificate: %w", err)
	}
	return nil
}

// mustRead returns a file's bytes, or nil (which then fails to parse).
func mustRead(path string) []byte {
	b, _ := os.ReadFile(path)
	return b
}
