package agentapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/pki"
	"github.com/shoalvm/shoal/internal/store"
	"github.com/shoalvm/shoal/internal/store/storetest"
)

// handlerUnderTest is the agent API on a throwaway etcd.
func handlerUnderTest(t *testing.T) (*Handler, *store.Store) {
	t.Helper()
	st := storetest.New(t)
	log := slog.New(slog.DiscardHandler)
	return NewHandler(NewLocal(st, log), t.TempDir(), log), st
}

// as sends a request to h as the agent of host (its certificate is taken
// as verified, as the TLS layer does before the handler) and returns the
// status code and the error message of the answer, if any.
func as(t *testing.T, h http.Handler, host, method, target string, body []byte) (int, string) {
	t.Helper()
	r := httptest.NewRequest(method, target, bytes.NewReader(body))
	cert := &x509.Certificate{Subject: pkix.Name{CommonName: host, OrganizationalUnit: []string{pki.OUAgent}},
		SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}, VerifiedChains: [][]*x509.Certificate{{cert}}}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	var eb api.ErrorBody
	_ = json.Unmarshal(w.Body.Bytes(), &eb)
	return w.Code, eb.Error
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A host cannot make itself undying with a lease that never expires: its
// HA VMs would never fail over.
func TestHandlerLeaseTTLIsBounded(t *testing.T) {
	h, st := handlerUnderTest(t)
	host := mustJSON(t, api.Host{Name: "h1", ID: "machine-1", CPUs: 4, MemoryMiB: 4096})
	for _, ttl := range []string{"87600h", "31s", "500ms", "0s", "-3s", "soon"} {
		code, msg := as(t, h, "h1", "POST", "/v1/agent/register?ttl="+ttl, host)
		if code != http.StatusBadRequest || !strings.Contains(msg, "from 1s to 30s") {
			t.Errorf("register with ttl %s: %d %q, want 400 naming the bounds", ttl, code, msg)
		}
	}
	if alive, err := st.HostAlive(context.Background(), "h1"); err != nil || alive {
		t.Fatalf("a refused registration left the host alive (%v, %v)", alive, err)
	}
	if code, msg := as(t, h, "h1", "POST", "/v1/agent/register?ttl=3s", host); code != http.StatusNoContent {
		t.Fatalf("register with the agents' ttl: %d %q", code, msg)
	}
	if code, msg := as(t, h, "h1", "POST", "/v1/agent/register?ttl=30s", host); code != http.StatusNoContent {
		t.Fatalf("register with the longest ttl: %d %q", code, msg)
	}
}

// Every route that reads a body reads at most MaxBody of it, and only one
// JSON value.
func TestHandlerBodiesAreBounded(t *testing.T) {
	h, _ := handlerUnderTest(t)
	routes := []string{
		"/v1/agent/register?ttl=3s", "/v1/agent/status", "/v1/agent/guest-stopped", "/v1/agent/removed",
		"/v1/agent/migration/ready", "/v1/agent/migration/commit", "/v1/agent/migration/progress/x",
		"/v1/agent/claim-start", "/v1/agent/crashed",
	}
	// A valid JSON object, too big: {"name":"h1","x":"aaaa..."}.
	huge := []byte(`{"name":"h1","x":"` + strings.Repeat("a", MaxBody) + `"}`)
	for _, path := range routes {
		if code, msg := as(t, h, "h1", "POST", path, huge); code != http.StatusRequestEntityTooLarge || !strings.Contains(msg, "request body over") {
			t.Errorf("POST %s with %d bytes: %d %q, want 413", path, len(huge), code, msg)
		}
		if code, msg := as(t, h, "h1", "POST", path, []byte(`{"name":"h1"} {"name":"h2"}`)); code != http.StatusBadRequest || !strings.Contains(msg, "data after") {
			t.Errorf("POST %s with two values: %d %q, want 400", path, code, msg)
		}
		if code, msg := as(t, h, "h1", "POST", path, nil); code != http.StatusBadRequest || !strings.Contains(msg, "empty") {
			t.Errorf("POST %s with no body: %d %q, want 400", path, code, msg)
		}
	}
}

// A host reads the status of its own VMs and of those migrating to or from
// it, not of any other.
func TestHandlerStatusOnlyOfOwnVMs(t *testing.T) {
	h, st := handlerUnderTest(t)
	ctx := context.Background()
	vm := api.VMSpec{Name: "web", ID: "vm-1", Host: "h1", Network: "default", IP: "10.0.0.5", MAC: "52:54:00:00:00:05"}
	if _, err := st.CreateVM(ctx, vm); err != nil {
		t.Fatal(err)
	}
	if err := st.PutStatus(ctx, api.VMStatus{ID: "vm-1", Name: "web", Host: "h1", State: api.StateRunning, RestartGen: 2}); err != nil {
		t.Fatal(err)
	}
	read := func(host string) int {
		code, _ := as(t, h, host, "GET", "/v1/agent/status/vm-1", nil)
		return code
	}
	if c := read("h1"); c != http.StatusOK {
		t.Fatalf("owner reads its VM's status: %d, want 200", c)
	}
	if c := read("h2"); c != http.StatusUnauthorized {
		t.Fatalf("another host reads the VM's status: %d, want 401", c)
	}
	if _, err := st.UpdateVM(ctx, "web", func(v *api.VMSpec) error {
		v.Migration = &api.Migration{ID: "m1", Source: "h1", Target: "h2"}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if c := read("h2"); c != http.StatusOK {
		t.Fatalf("the migration's target reads the VM's status: %d, want 200", c)
	}
	if c := read("h3"); c != http.StatusUnauthorized {
		t.Fatalf("a host outside the migration reads the VM's status: %d, want 401", c)
	}
}

// TestPoolsGiveTheStorageServersPortal: hosts get a managed pool with
// its storage server's portal, an adopted one with its own.
func TestPoolsGiveTheStorageServersPortal(t *testing.T) {
	ctx := context.Background()
	st := storetest.New(t)
	l := NewLocal(st, slog.New(slog.DiscardHandler))
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(st.PutHost(ctx, api.Host{Name: "nas", Role: api.HostRoleStorage, Portal: "192.0.2.10:3260"}))
	must(st.CreatePoolConfig(ctx, api.PoolConfig{Name: "san", Type: api.PoolISCSI, Server: "nas", CHAPUser: "shoal", CHAPSecret: "s3cret-s3cret-42"}))
	must(st.CreatePoolConfig(ctx, api.PoolConfig{Name: "ext", Type: api.PoolISCSI, Portal: "192.0.2.20:3260", Target: "iqn.2003-01.org.example:d"}))
	cs, err := l.Pools(ctx)
	must(err)
	got := map[string]string{}
	for _, c := range cs {
		got[c.Name] = c.Portal
	}
	if got["san"] != "192.0.2.10:3260" || got["ext"] != "192.0.2.20:3260" || len(got) != 2 {
		t.Errorf("portals: %v", got)
	}
}
