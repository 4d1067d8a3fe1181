package server

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/pki"
	"github.com/shoalvm/shoal/internal/store"
	"github.com/shoalvm/shoal/internal/store/storetest"
)

// newJoinHarness starts a server with a cluster CA and embedded etcd,
// registered as the live replica s1, for the join endpoints.
func newJoinHarness(t *testing.T) *apiHarness {
	t.Helper()
	ctx := context.Background()
	st := storetest.New(t)
	must(t, st.PutToken(ctx, apiTestToken, store.TokenInfo{Name: "admin", Role: "admin", CreatedAt: time.Now()}))
	pkiDir := t.TempDir()
	if _, _, err := pki.Ensure(pkiDir, []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	cfg := Config{PKIDir: pkiDir, EmbeddedEtcd: true, Name: "s1"}
	srv := New(cfg, st, slog.New(slog.DiscardHandler))
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	ss, err := st.NewSession(ctx, 10*time.Second)
	must(t, err)
	t.Cleanup(func() { ss.Close() })
	must(t, st.RegisterServer(ctx, ss, api.Server{Name: "s1", URL: "https://127.0.0.1:7443"}))
	return &apiHarness{t: t, st: st, srv: srv, cfg: cfg, url: ts.URL}
}

// joinToken makes a join token through the API; kind "" sends no body.
func (h *apiHarness) joinToken(kind string) TokenResponse {
	h.t.Helper()
	var body any
	if kind != "" {
		body = TokenRequest{Kind: kind}
	}
	var tr TokenResponse
	h.call("POST", "/v1/cluster/tokens", body).decodeOK(h.t, http.StatusCreated, &tr)
	return tr
}

// hostJoin is a host's join request, with a good certificate request.
func (h *apiHarness) hostJoin(token, host string) JoinRequest {
	h.t.Helper()
	csr, err := pki.NewCSR(h.t.TempDir(), host, []string{"127.0.0.1"})
	must(h.t, err)
	return JoinRequest{Token: token, Host: host, CSR: string(csr)}
}

// TestJoinTokenKinds checks that a host's join token buys no server
// replica (and so no CA key), that a server token buys no host, and that
// a token refused for its kind stays good for its own.
func TestJoinTokenKinds(t *testing.T) {
	h := newJoinHarness(t)
	peer := fmt.Sprintf("https://127.0.0.1:%d", storetest.FreePort(t))

	host := h.joinToken("")
	if host.Kind != store.JoinHost {
		t.Errorf("a token made without a kind is of kind %q; want host", host.Kind)
	}
	r := h.callToken("", "POST", ServerJoinPath, ServerJoinRequest{Token: host.Token, Name: "s2", PeerURL: peer, Hosts: []string{"127.0.0.1"}})
	if strings.Contains(string(r.body), "ca_key") {
		t.Fatalf("a host token bought the CA key: %d", r.code)
	}
	r.wantError(t, http.StatusUnauthorized, "unauthorized", "host join token", "shoal cluster token --server")
	if ms, err := h.st.Members(context.Background()); err != nil || len(ms) != 1 {
		t.Errorf("a refused server join changed the members: %+v, %v", ms, err)
	}

	srv := h.joinToken(store.JoinServer)
	if srv.Kind != store.JoinServer {
		t.Errorf("a server token is of kind %q", srv.Kind)
	}
	h.callToken("", "POST", "/v1/join", h.hostJoin(srv.Token, "h1")).
		wantError(t, http.StatusUnauthorized, "unauthorized", "server join token", "'shoal cluster token'")

	// Both tokens survived the refusals, each for its own kind.
	var jr JoinResponse
	h.callToken("", "POST", "/v1/join", h.hostJoin(host.Token, "h1")).decodeOK(t, http.StatusOK, &jr)
	var sr ServerJoinResponse
	h.callToken("", "POST", ServerJoinPath, ServerJoinRequest{Token: srv.Token, Name: "s2", PeerURL: peer, Hosts: []string{"127.0.0.1"}}).
		decodeOK(t, http.StatusOK, &sr)
	if !strings.Contains(string(sr.CAKey), "PRIVATE KEY") {
		t.Errorf("a server token bought no CA key")
	}

	h.call("POST", "/v1/cluster/tokens", TokenRequest{Kind: "admin"}).wantError(t, http.StatusBadRequest, "invalid", `kind "admin" must be`)

	// Every join is in the audit trail, refused ones too.
	var recs []api.AuditRecord
	h.call("GET", "/v1/audit", nil).decodeOK(t, http.StatusOK, &recs)
	var got []string
	for _, r := range recs {
		if strings.HasSuffix(r.Action, ".join") {
			got = append(got, r.Action+" "+r.Object+" "+r.Result)
		}
	}
	slices.Sort(got)
	want := []string{"host.join host/h1 failed", "host.join host/h1 ok", "server.join server/s2 failed", "server.join server/s2 ok"}
	if !slices.Equal(got, want) {
		t.Errorf("joins in the audit trail: %q, want %q", got, want)
	}
}

// TestJoinHostRace sends concurrent joins under one host name, each with
// a good token of its own: exactly one wins, the others get a conflict
// and keep their tokens; the winner's name shows in the host list.
func TestJoinHostRace(t *testing.T) {
	h := newJoinHarness(t)
	const n = 20
	reqs := make([]JoinRequest, n)
	for i := range reqs {
		reqs[i] = h.hostJoin(h.joinToken("").Token, "h1")
	}
	codes := make([]int, n)
	var wg sync.WaitGroup
	for i := range reqs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i] = h.callToken("", "POST", "/v1/join", reqs[i]).code
		}()
	}
	wg.Wait()
	wins := 0
	var loser *JoinRequest
	for i, c := range codes {
		switch c {
		case http.StatusOK:
			wins++
		case http.StatusConflict:
			loser = &reqs[i]
		default:
			t.Errorf("join %d: %d; want 200 or 409", i, c)
		}
	}
	if wins != 1 {
		t.Fatalf("%d of %d concurrent joins as h1 won; want exactly 1", wins, n)
	}
	var hosts []api.Host
	h.call("GET", "/v1/hosts", nil).decodeOK(t, http.StatusOK, &hosts)
	if len(hosts) != 1 || hosts[0].Name != "h1" || hosts[0].State != api.HostDown {
		t.Errorf("hosts after the join: %+v; want h1, down until its agent reports", hosts)
	}
	if loser != nil { // a loser's token still buys another name
		var jr JoinResponse
		h.callToken("", "POST", "/v1/join", h.hostJoin(loser.Token, "h2")).decodeOK(t, http.StatusOK, &jr)
	}
}

// TestJoinBadTokenTellsNothing checks that the unauthenticated join
// endpoints answer a bad token alike whether the name asked for is taken
// or not: they check the token before anything else of the cluster.
func TestJoinBadTokenTellsNothing(t *testing.T) {
	h := newJoinHarness(t)
	putHost(t, h.st, testHost("h1", 4096, 4))
	peer := fmt.Sprintf("https://127.0.0.1:%d", storetest.FreePort(t))
	for _, c := range []struct {
		what          string
		path          string
		taken, unused any
	}{
		{"host", "/v1/join", h.hostJoin("nope.cahash", "h1"), h.hostJoin("nope.cahash", "h9")},
		{"server", ServerJoinPath,
			ServerJoinRequest{Token: "nope.cahash", Name: "s1", PeerURL: peer, Hosts: []string{"127.0.0.1"}},
			ServerJoinRequest{Token: "nope.cahash", Name: "s9", PeerURL: peer, Hosts: []string{"127.0.0.1"}}},
	} {
		taken := h.callToken("", "POST", c.path, c.taken)
		unused := h.callToken("", "POST", c.path, c.unused)
		if taken.code != http.StatusUnauthorized || taken.code != unused.code || string(taken.body) != string(unused.body) {
			t.Errorf("%s join with a bad token: a taken name gets %d %s, a free one %d %s; want the same 401",
				c.what, taken.code, taken.body, unused.code, unused.body)
		}
	}
}
