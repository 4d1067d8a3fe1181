package agentapi

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/shoalvm/shoal/internal/pki"
	"github.com/shoalvm/shoal/internal/store/storetest"
)

// fuzzAgentRoutes are the agent API's calls with a body, and those with
// a name in the path (NAME).
var fuzzAgentRoutes = []struct{ method, path string }{
	{"POST", "/v1/agent/register?ttl=NAME"},
	{"POST", "/v1/agent/status"},
	{"GET", "/v1/agent/status/NAME"},
	{"POST", "/v1/agent/guest-stopped"},
	{"POST", "/v1/agent/removed"},
	{"POST", "/v1/agent/migration/ready"},
	{"POST", "/v1/agent/migration/commit"},
	{"POST", "/v1/agent/migration/progress/NAME"},
	{"GET", "/v1/agent/networks/NAME"},
	{"GET", "/v1/agent/images/NAME"},
	{"POST", "/v1/agent/claim-start"},
	{"POST", "/v1/agent/crashed"},
	{"POST", "/v1/agent/renew"},
}

// FuzzAgentAPI: no body or name a host sends makes the agent API answer
// 500 or panic.
func FuzzAgentAPI(f *testing.F) {
	for i, s := range []string{
		`{"name":"host1","cpus":4,"memory_mib":4096}`, `{"id":"0123456789ab","host":"host1","state":"running"}`,
		`{"name":"web1","id":"x","host":"host1"}`, `{"spec":{"name":"web1"},"endpoint":{"uri":"tls:1.2.3.4:5"}}`,
		`{"csr":"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----"}`, `{"migration_csr":"x"}`,
		`null`, `{}`, `[]`, `{"name":1}`, "\x00", `{"a":1}{"b":2}`,
	} {
		f.Add(uint8(i), "3s", []byte(s))
	}
	f.Add(uint8(2), "..%2f", []byte(nil))
	h := NewHandler(NewLocal(storetest.New(f), slog.New(slog.DiscardHandler)), f.TempDir(), slog.New(slog.DiscardHandler))
	ca := f.TempDir()
	if _, _, err := pki.Ensure(ca, []string{"127.0.0.1"}); err != nil {
		f.Fatal(err)
	}
	h.Certs = &testCerts{ca: ca}
	host := &x509.Certificate{Subject: pkix.Name{CommonName: "host1", OrganizationalUnit: []string{pki.OUAgent}}}
	host.NotAfter = host.NotBefore.AddDate(3000, 0, 0)
	asHost := func(req *http.Request) *http.Request {
		req.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{host}, VerifiedChains: [][]*x509.Certificate{{host}}}
		return req
	}
	// The fuzzed calls get past the certificate check to the handlers.
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, asHost(httptest.NewRequest("GET", "/v1/agent/servers", nil)))
	if rec.Code != http.StatusOK {
		f.Fatalf("the fuzz's host is refused: %d %s", rec.Code, rec.Body)
	}
	f.Fuzz(func(t *testing.T, route uint8, name string, body []byte) {
		rt := fuzzAgentRoutes[int(route)%len(fuzzAgentRoutes)]
		esc := url.PathEscape
		if strings.Contains(rt.path, "?") {
			esc = url.QueryEscape
		}
		req := asHost(httptest.NewRequest(rt.method, strings.ReplaceAll(rt.path, "NAME", esc(name)), bytes.NewReader(body)))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code >= 500 && rec.Code != http.StatusServiceUnavailable {
			t.Fatalf("%s %s with body %q: %d %s", rt.method, req.URL, body, rec.Code, rec.Body)
		}
	})
}
