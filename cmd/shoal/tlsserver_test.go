package main

import (
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/shoalvm/shoal/internal/pki"
)

// newServerTLS starts h over HTTPS with a server certificate of a
// cluster CA of its own, as a Shoal server has (the CLI accepts no
// other), and returns it with that CA in PEM.
func newServerTLS(t *testing.T, h http.Handler) (*httptest.Server, string) {
	t.Helper()
	cert, caPEM, err := pki.Ensure(t.TempDir(), []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv, string(caPEM)
}
