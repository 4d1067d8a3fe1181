package qemu

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
)

// TLS for migration and NBD. QEMU's tls-creds-x509 object reads its
// certificates from a directory with fixed file names; WriteTLSDir lays
// one out, and AddTLSCreds creates the object. Its id is then named by
// MigrateOptions.TLSCreds, IncomingOptions.TLSCreds, StartNBDServer and
// MirrorToNBD. The same directory serves both roles: a cluster
// certificate carries both the serverAuth and clientAuth key purposes.

// Files of a tls-creds-x509 directory.
const (
	TLSCACert     = "ca-cert.pem"
	TLSServerCert = "server-cert.pem"
	TLSServerKey  = "server-key.pem"
	TLSClientCert = "client-cert.pem"
	TLSClientKey  = "client-key.pem"
	TLSDHParams   = "dh-params.pem"
)

// dhParams is the ffdhe2048 group of RFC 7919, in PKCS#3 PEM. A server
// endpoint without a dh-params.pem makes GnuTLS generate a group when
// the credentials are created, which takes from 0.1 s to over a second,
// on every migration. (TLS 1.3 with ECDHE does not even use it.)
const dhParams = `-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
`

// WriteTLSDir writes caPEM (the CA certificates peers must chain to) and
// one certificate and key, for both the server and the client role, into
// dir in the layout of QEMU's tls-creds-x509, with fixed Diffie-Hellman
// parameters. certPEM may hold a chain,
// leaf first. The key may be PEM "EC PRIVATE KEY" (as internal/pki
// writes), "RSA PRIVATE KEY" or "PRIVATE KEY"; it is checked to match the
// certificate and written as PKCS#8 ("PRIVATE KEY"), the one form every
// GnuTLS reads. dir is created 0700 and the files are 0600; each is
// replaced atomically, so QEMU never reads a half-written file.
func WriteTLSDir(dir string, caPEM, certPEM, keyPEM []byte) error {
	if err := checkCerts(caPEM); err != nil {
		return fmt.Errorf("tls dir %s: CA: %w", dir, err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("tls dir %s: certificate and key: %w", dir, err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(pair.PrivateKey)
	if err != nil {
		return fmt.Errorf("tls dir %s: encode key: %w", dir, err)
	}
	keyOut := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("tls dir: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("tls dir: %w", err)
	}
	files := []struct {
		name string
		data []byte
	}{
		{TLSCACert, caPEM},
		{TLSServerCert, certPEM},
		{TLSServerKey, keyOut},
		{TLSClientCert, certPEM},
		{TLSClientKey, keyOut},
		{TLSDHParams, []byte(dhParams)},
	}
	for _, f := range files {
		if err := writeFileAtomic(filepath.Join(dir, f.name), f.data, 0o600); err != nil {
			return fmt.Errorf("tls dir %s: %w", dir, err)
		}
	}
	return nil
}

// checkCerts checks that b holds at least one PEM certificate and that
// every one parses.
func checkCerts(b []byte) error {
	n := 0
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		if _, err := x509.ParseCertificate(blk.Bytes); err != nil {
			return err
		}
		n++
	}
	if n == 0 {
		return errors.New("no PEM certificate")
	}
	return nil
}

// writeFileAtomic writes data to a temporary file beside path and renames
// it over path.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename there is nothing to remove
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// AddTLSCreds creates the tls-creds-x509 object id from the files in dir
// (see WriteTLSDir), for the server endpoint (the migration target, the
// NBD server) or the client one (the migration source, the NBD client).
// The peer's certificate is always verified against the CA. QEMU reads
// the files now: rewriting them later does not affect the object.
//
// It is idempotent: if an object id already exists with the same
// endpoint and dir, it returns nil; with other settings, an error.
func (p *Process) AddTLSCreds(ctx context.Context, id, dir string, server bool) error {
	if id == "" || dir == "" {
		return fmt.Errorf("qemu %s: tls creds: empty id or dir", p.Dir)
	}
	endpoint := "client"
	if server {
		endpoint = "server"
	}
	err := p.qmp.Execute(ctx, "object-add", map[string]any{
		"qom-type":    "tls-creds-x509",
		"id":          id,
		"endpoint":    endpoint,
		"dir":         dir,
		"verify-peer": true,
	}, nil)
	if err == nil {
		return nil
	}
	// Maybe it exists already (a retry); then its settings must match.
	exists, qerr := p.objectExists(ctx, id, "tls-creds-x509")
	if qerr != nil || !exists {
		return fmt.Errorf("qemu %s: add tls creds %s: %w", p.Dir, id, err)
	}
	var gotDir, gotEndpoint string
	var gotVerify bool
	if err := p.qomGet(ctx, "/objects/"+id, "dir", &gotDir); err != nil {
		return err
	}
	if err := p.qomGet(ctx, "/objects/"+id, "endpoint", &gotEndpoint); err != nil {
		return err
	}
	if err := p.qomGet(ctx, "/objects/"+id, "verify-peer", &gotVerify); err != nil {
		return err
	}
	if gotDir != dir || gotEndpoint != endpoint || !gotVerify {
		return fmt.Errorf("qemu %s: tls creds %s exist with endpoint %s, dir %s, verify-peer %t; want %s, %s, true: remove them first",
			p.Dir, id, gotEndpoint, gotDir, gotVerify, endpoint, dir)
	}
	return nil
}

// AddAuthz creates the authz object id, which admits a TLS peer only if
// its certificate's distinguished name is one of identities, as GnuTLS
// writes it (see pki.AgentDN), and turns every other peer away. A
// migration target names it in IncomingOptions.TLSAuthz. Like
// AddTLSCreds, it is idempotent.
func (p *Process) AddAuthz(ctx context.Context, id string, identities ...string) error {
	if id == "" || len(identities) == 0 {
		return fmt.Errorf("qemu %s: authz: empty id or no identity", p.Dir)
	}
	rules := make([]authzRule, len(identities))
	for i, dn := range identities {
		if dn == "" {
			return fmt.Errorf("qemu %s: authz %s: empty identity", p.Dir, id)
		}
		rules[i] = authzRule{Match: dn, Policy: "allow", Format: "exact"}
	}
	err := p.qmp.Execute(ctx, "object-add", map[string]any{"qom-type": "authz-list", "id": id, "policy": "deny", "rules": rules}, nil)
	if err == nil {
		return nil
	}
	exists, qerr := p.objectExists(ctx, id, "authz-list")
	if qerr != nil || !exists {
		return fmt.Errorf("qemu %s: add authz %s: %w", p.Dir, id, err)
	}
	var got []authzRule
	if err := p.qomGet(ctx, "/objects/"+id, "rules", &got); err != nil {
		return err
	}
	if !slices.Equal(got, rules) {
		return fmt.Errorf("qemu %s: authz %s exists with rules %v, not %v", p.Dir, id, got, rules)
	}
	return nil
}

// authzRule is a rule of QEMU's authz-list.
type authzRule struct {
	Match  string `json:"match"`
	Policy string `json:"policy"`
	Format string `json:"format"`
}

// RemoveTLSCreds deletes the tls-creds-x509 object id, for instance to
// load renewed certificates. Without such an object it does nothing.
func (p *Process) RemoveTLSCreds(ctx context.Context, id string) error {
	exists, err := p.objectExists(ctx, id, "tls-creds-x509")
	if err != nil || !exists {
		return err
	}
	if err := p.qmp.Execute(ctx, "object-del", map[string]any{"id": id}, nil); err != nil {
		return fmt.Errorf("qemu %s: %w", p.Dir, err)
	}
	return nil
}

// objectExists reports whether /objects has a child id of QOM type typ.
func (p *Process) objectExists(ctx context.Context, id, typ string) (bool, error) {
	var props []qomProperty
	if err := p.qmp.Execute(ctx, "qom-list", map[string]any{"path": "/objects"}, &props); err != nil {
		return false, fmt.Errorf("qemu %s: %w", p.Dir, err)
	}
	return slices.Contains(props, qomProperty{Name: id, Type: "child<" + typ + ">"}), nil
}

// qomProperty is an entry of qom-list.
type qomProperty struct {
	Name string `json:"name"`
	Type string `json:"type"`
}

func (p *Process) qomGet(ctx context.Context, path, prop string, v any) error {
	if err := p.qmp.Execute(ctx, "qom-get", map[string]any{"path": path, "property": prop}, v); err != nil {
		return fmt.Errorf("qemu %s: %w", p.Dir, err)
	}
	return nil
}
