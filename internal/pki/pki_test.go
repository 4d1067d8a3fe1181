package pki

import (
	"crypto/x509"
	"testing"
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
