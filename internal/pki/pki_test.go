package pki

import (
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestEnsure(t *testing.T) {
	dir := t.TempDir()
	cert, caPEM, err := Ensure(dir, []string{"127.0.0.1", "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("CA PEM does not parse")
	}
	leaf, _ := x509.ParseCertificate(cert.Certificate[0])
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "127.0.0.1"}); err != nil {
		t.Fatalf("server cert does not verify: %v", err)
	}
	again, caPEM2, err := Ensure(dir, []string{"127.0.0.1"})
	if err != nil || string(caPEM2) != string(caPEM) || string(again.Certificate[0]) != string(cert.Certificate[0]) {
		t.Fatal("second Ensure replaced the CA or certificate")
	}
	renewed, _, err := Ensure(dir, []string{"10.1.2.3"})
	if err != nil || string(renewed.Certificate[0]) == string(cert.Certificate[0]) {
		t.Fatal("a new address did not renew the server certificate")
	}
}

func TestServerBundle(t *testing.T) {
	first := t.TempDir()
	if _, _, err := Ensure(first, []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	b, err := ServerBundle(first, []string{"10.57.0.252", "server2"})
	if err != nil {
		t.Fatal(err)
	}
	joiner := t.TempDir()
	if err := InstallBundle(joiner, b); err != nil {
		t.Fatal(err)
	}
	// The joiner keeps the certificate it was given, and shares the CA.
	cert, caPEM, err := Ensure(joiner, []string{"10.57.0.252", "server2"})
	if err != nil {
		t.Fatal(err)
	}
	if string(caPEM) != string(b.CACert) || string(certPEM(cert.Certificate[0])) != string(b.Cert) {
		t.Error("Ensure replaced the installed CA or certificate")
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	leaf, _ := x509.ParseCertificate(cert.Certificate[0])
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "10.57.0.252"}); err != nil {
		t.Errorf("the replica's certificate does not verify: %v", err)
	}
	// A bundle whose certificate is another CA's is refused.
	other := t.TempDir()
	if _, _, err := Ensure(other, []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	ob, _ := ServerBundle(other, []string{"127.0.0.1"})
	ob.CACert, ob.CAKey = b.CACert, b.CAKey
	if err := InstallBundle(t.TempDir(), ob); err == nil {
		t.Error("a certificate of another CA was installed")
	}
}

// TestSignAgentDecidesAddresses: a host's certificate holds the addresses
// the server gives it, not those its request asks for, and never names.
func TestSignAgentDecidesAddresses(t *testing.T) {
	ca := t.TempDir()
	if _, _, err := Ensure(ca, []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	csr, err := NewCSR(t.TempDir(), "host1", []string{"10.0.0.1", "127.0.0.1", "shoal.example"})
	if err != nil {
		t.Fatal(err)
	}
	certPEM, err := SignAgent(ca, csr, "host1", []net.IP{net.ParseIP("10.57.0.2")})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(certPEM)
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.DNSNames) != 0 || len(c.IPAddresses) != 1 || !c.IPAddresses[0].Equal(net.ParseIP("10.57.0.2")) {
		t.Errorf("certificate names %v and %v, want only 10.57.0.2", c.DNSNames, c.IPAddresses)
	}
	if c.Subject.CommonName != "host1" || c.Subject.OrganizationalUnit[0] != OUAgent {
		t.Errorf("subject %v", c.Subject)
	}
}

func TestAgentCertLifetime(t *testing.T) {
	ca := t.TempDir()
	if _, _, err := Ensure(ca, []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	csr, err := NewCSR(t.TempDir(), "host1", nil)
	if err != nil {
		t.Fatal(err)
	}
	before := time.Now().Truncate(time.Second)
	certPEM, err := SignAgent(ca, csr, "host1", nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(certPEM)
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if life := c.NotAfter.Sub(IssuedAt(c)); life != AgentCertLifetime {
		t.Errorf("lifetime %v, want %v", life, AgentCertLifetime)
	}
	if at := IssuedAt(c); at.Before(before) || at.After(time.Now()) {
		t.Errorf("issued at %v, want about now", at)
	}
	now := IssuedAt(c)
	if RenewDue(c, now.Add(time.Hour)) || !RenewDue(c, now.Add(AgentCertLifetime/3+time.Minute)) || !RenewDue(c, c.NotAfter.Add(time.Hour)) {
		t.Error("RenewDue: want false after an hour, true after a third of the life and after expiry")
	}
	// Revoked this second: the certificate may be from before.
	if !IssuedBefore(c, now.Add(300*time.Millisecond)) || IssuedBefore(c, now.Add(-time.Second)) {
		t.Error("IssuedBefore: want true for a revocation in the same second, false for one a second before")
	}
}

// TestMigrationCert: a host's migration certificate has a role of its
// own, server use only, and installs only as such, for its key.
func TestMigrationCert(t *testing.T) {
	ca := t.TempDir()
	_, caPEM, err := Ensure(ca, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	host := t.TempDir()
	if err := os.WriteFile(filepath.Join(host, CACert), caPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if !MigrationDue(host, time.Now()) {
		t.Fatal("no migration certificate, yet not due")
	}
	csr, err := MigrationCSR(host, "host1")
	if err != nil {
		t.Fatal(err)
	}
	// An agent certificate for the same key is not a migration one.
	agent, err := SignAgent(ca, csr, "host1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := InstallMigration(host, agent); err == nil {
		t.Error("an agent certificate installed as the migration one")
	}
	cert, err := SignMigration(ca, csr, "host1", []net.IP{net.ParseIP("10.57.0.2")})
	if err != nil {
		t.Fatal(err)
	}
	if err := InstallMigration(host, cert); err != nil {
		t.Fatal(err)
	}
	if MigrationDue(host, time.Now()) {
		t.Error("a fresh migration certificate is due")
	}
	b, _ := pem.Decode(cert)
	c, _ := x509.ParseCertificate(b.Bytes)
	if c.Subject.OrganizationalUnit[0] != OUMigration || c.Subject.CommonName != "host1" ||
		len(c.ExtKeyUsage) != 1 || c.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth {
		t.Errorf("migration certificate %v, usage %v", c.Subject, c.ExtKeyUsage)
	}
	// A second request keeps the key.
	csr2, err := MigrationCSR(host, "host1")
	if err != nil {
		t.Fatal(err)
	}
	cert2, err := SignMigration(ca, csr2, "host1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := InstallMigration(host, cert2); err != nil {
		t.Errorf("renewal with the same key: %v", err)
	}
}
