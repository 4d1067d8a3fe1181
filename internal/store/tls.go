package store

import (
	"crypto/tls"
	"crypto/x509"
	"net/url"
	"os"

	"github.com/shoalvm/shoal/internal/api"
)

// TLSFiles are the files with which Shoal reaches an external etcd over
// TLS (--etcd-cacert, --etcd-cert, --etcd-key), as etcd's own clients do.
type TLSFiles struct {
	CACert string // PEM CA certificate(s) that signed etcd's server certificates
	Cert   string // PEM client certificate, for etcd's --client-cert-auth
	Key    string // its PEM private key
}

// Given tells whether any file is set.
func (f TLSFiles) Given() bool { return f.CACert != "" || f.Cert != "" || f.Key != "" }

// ExternalTLS checks the endpoints of an external etcd against the TLS
// files and loads them: nil for clear-text http:// endpoints (no files),
// else the TLS settings for https:// endpoints, which need the CA. Every
// mistake is an api.ErrInvalid naming the flag to fix.
func ExternalTLS(endpoints []string, f TLSFiles) (*tls.Config, error) {
	if len(endpoints) == 0 {
		if f.Given() {
			return nil, api.Errorf(api.ErrInvalid, "--etcd-cacert, --etcd-cert and --etcd-key are for an external etcd: give its --etcd-endpoints too")
		}
		return nil, nil
	}
	secure := 0
	for _, e := range endpoints {
		u, err := url.Parse(e)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			return nil, api.Errorf(api.ErrInvalid, "--etcd-endpoints: %q is not an http:// or https:// URL", e)
		}
		if u.Scheme == "https" {
			secure++
		}
	}
	switch {
	case secure != 0 && secure != len(endpoints):
		return nil, api.Errorf(api.ErrInvalid, "--etcd-endpoints mixes http:// and https:// URLs: give every member's https:// URL")
	case secure == 0 && f.Given():
		return nil, api.Errorf(api.ErrInvalid, "--etcd-endpoints are clear-text http:// URLs, yet TLS files were given: use the members' https:// URLs")
	case secure == 0:
		return nil, nil
	case f.CACert == "":
		return nil, api.Errorf(api.ErrInvalid, "https:// etcd endpoints need --etcd-cacert: the CA certificate that signed the etcd members' certificates")
	case (f.Cert == "") != (f.Key == ""):
		return nil, api.Errorf(api.ErrInvalid, "--etcd-cert and --etcd-key go together: give both (the client certificate and its key) or neither")
	}
	caPEM, err := os.ReadFile(f.CACert)
	if err != nil {
		return nil, api.Errorf(api.ErrInvalid, "--etcd-cacert: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, api.Errorf(api.ErrInvalid, "--etcd-cacert %s holds no PEM certificate", f.CACert)
	}
	tc := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if f.Cert != "" {
		for _, p := range []struct{ flag, path string }{{"--etcd-cert", f.Cert}, {"--etcd-key", f.Key}} {
			if _, err := os.Stat(p.path); err != nil {
				return nil, api.Errorf(api.ErrInvalid, "%s: %v", p.flag, err)
			}
		}
		cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
		if err != nil {
			return nil, api.Errorf(api.ErrInvalid, "--etcd-cert %s with --etcd-key %s: %v", f.Cert, f.Key, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}
