package store_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/store"
	"github.com/shoalvm/shoal/internal/store/storetest"
)

// TestExternalEtcdTLS runs Debian's etcd with TLS and client-certificate
// authentication: the store works over it with the client certificate
// (records, member status, compaction, defragmentation), and etcd refuses
// a client without one.
func TestExternalEtcdTLS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	e := storetest.StartExternalEtcd(t)
	eps := []string{e.Endpoint}

	tc, err := store.ExternalTLS(eps, e.TLS)
	if err != nil {
		t.Fatal(err)
	}
	c, err := store.ConnectTLS(ctx, eps, tc)
	if err != nil {
		t.Fatalf("connect with the client certificate: %v", err)
	}
	defer c.Close()
	st := store.New(c)
	n := api.Network{Name: "default", Bridge: "shoal0", Subnet: "10.57.0.0/24", Gateway: "10.57.0.1"}
	if err := st.PutNetwork(ctx, n); err != nil {
		t.Fatal(err)
	}
	if got, err := st.GetNetwork(ctx, "default"); err != nil || got.Subnet != n.Subnet {
		t.Fatalf("read back over TLS: %+v, %v", got, err)
	}
	ms, err := st.MemberStatuses(ctx)
	if err != nil || len(ms) != 1 || ms[0].Err != nil || ms[0].Endpoint != e.Endpoint || !ms[0].Leader || ms[0].DBSize == 0 {
		t.Fatalf("member status over TLS: %+v, %v", ms, err)
	}
	rev, err := st.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Compact(ctx, rev); err != nil {
		t.Fatal(err)
	}
	if err := st.Defragment(ctx, e.Endpoint); err != nil {
		t.Fatal(err)
	}

	noCert := e.TLS
	noCert.Cert, noCert.Key = "", ""
	tc, err = store.ExternalTLS(eps, noCert)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := store.ConnectTLS(ctx, eps, tc); err == nil {
		c.Close()
		t.Fatal("etcd with --client-cert-auth took a client without a certificate")
	}
	if c, err := store.ConnectTLS(ctx, eps, nil); err == nil {
		c.Close()
		t.Fatal("etcd over TLS answered a clear-text client")
	}
}

// TestExternalTLSBadInput: each mistake in the TLS flags of an external
// etcd is refused at start, with the flag to fix.
func TestExternalTLSBadInput(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "nope.pem")
	https := []string{"https://127.0.0.1:2379"}
	for _, tc := range []struct {
		name string
		eps  []string
		f    store.TLSFiles
		want string
	}{
		{"files without endpoints", nil, store.TLSFiles{CACert: missing}, "give its --etcd-endpoints"},
		{"https without CA", https, store.TLSFiles{}, "need --etcd-cacert"},
		{"cert without key", https, store.TLSFiles{CACert: missing, Cert: missing}, "--etcd-cert and --etcd-key go together"},
		{"key without cert", https, store.TLSFiles{CACert: missing, Key: missing}, "--etcd-cert and --etcd-key go together"},
		{"missing CA file", https, store.TLSFiles{CACert: missing}, "--etcd-cacert: open " + missing},
		{"http with files", []string{"http://127.0.0.1:2379"}, store.TLSFiles{CACert: missing}, "clear-text http://"},
		{"mixed schemes", []string{"http://a:1", "https://b:2"}, store.TLSFiles{}, "mixes http:// and https://"},
		{"not a URL", []string{"127.0.0.1:2379"}, store.TLSFiles{}, "is not an http:// or https:// URL"},
	} {
		_, err := store.ExternalTLS(tc.eps, tc.f)
		if !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an invalid-input error with %q", tc.name, err, tc.want)
		}
	}
}
