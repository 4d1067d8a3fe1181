package agentapi

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/pki"
	"github.com/shoalvm/shoal/internal/store/storetest"
)

// peer is the TLS state of a caller whose verified certificate has this
// role (OU); "" is a caller without a certificate.
func peer(role string) *tls.ConnectionState {
	if role == "" {
		return &tls.ConnectionState{}
	}
	c := &x509.Certificate{Subject: pkix.Name{CommonName: "host1", OrganizationalUnit: []string{role}}}
	return &tls.ConnectionState{PeerCertificates: []*x509.Certificate{c}, VerifiedChains: [][]*x509.Certificate{{c}}}
}

// TestEveryAgentRouteIsGuarded enumerates the agent API's routes from its
// own table: a user's API token buys nothing on any of them (401), nor
// does a certificate of a role the route does not admit; the roles it
// admits get through to the handler.
func TestEveryAgentRouteIsGuarded(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	h := NewHandler(NewLocal(storetest.New(t), log), t.TempDir(), log)
	routes := h.Routes()
	if len(routes) < 10 {
		t.Fatalf("the agent API lists %d routes", len(routes))
	}
	const refusal = "needs an agent certificate"
	fill := strings.NewReplacer("{id}", "nosuch", "{name}", "nosuch", "{file}", "disk.qcow2")
	for _, rt := range routes {
		method, pattern, _ := strings.Cut(rt.Pattern, " ")
		if len(rt.Roles) == 0 {
			t.Errorf("agent route %s admits no role", rt.Pattern)
		}
		for _, role := range []string{"", pki.OUAgent, pki.OUServer, "viewer"} {
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			req := httptest.NewRequestWithContext(ctx, method, fill.Replace(pattern), strings.NewReader("{}"))
			req.Header.Set("Authorization", "Bearer shoal_user_api_token")
			req.TLS = peer(role)
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			cancel()
			body, _ := io.ReadAll(w.Result().Body)
			refused := w.Code == http.StatusUnauthorized && strings.Contains(string(body), refusal)
			if admitted := slices.Contains(rt.Roles, role); admitted == refused {
				t.Errorf("%s with a certificate of role %q: %d %s (admitted: %v)", rt.Pattern, role, w.Code, body, admitted)
			}
		}
	}
}
