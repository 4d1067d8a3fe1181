package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/pki"
	"github.com/shoalvm/shoal/internal/store"
	"github.com/shoalvm/shoal/internal/store/storetest"
)

// TestServerJoin checks POST /v1/cluster/servers/join: it takes a join
// token instead of an API token, refuses what it must before using the
// token up, and gives a good joiner the cluster's CA, a certificate and
// its seat in etcd.
func TestServerJoin(t *testing.T) {
	ctx := context.Background()
	h := newJoinHarness(t)
	st, pkiDir := h.st, h.cfg.PKIDir
	token := func() string {
		secret := fmt.Sprintf("secret%d", time.Now().UnixNano())
		must(t, st.PutJoinToken(ctx, secret, store.JoinToken{Kind: store.JoinServer, Expires: time.Now().Add(time.Hour), CreatedAt: time.Now()}))
		return secret + ".cahash"
	}
	peer := fmt.Sprintf("https://127.0.0.1:%d", storetest.FreePort(t))
	post := func(req ServerJoinRequest) (int, []byte) {
		b, _ := json.Marshal(req)
		resp, err := http.Post(h.url+ServerJoinPath, "application/json", bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out bytes.Buffer
		_, _ = out.ReadFrom(resp.Body)
		return resp.StatusCode, out.Bytes()
	}
	good := ServerJoinRequest{Token: token(), Name: "s2", PeerURL: peer, Hosts: []string{"127.0.0.1", "s2"}}
	for _, c := range []struct {
		name string
		req  ServerJoinRequest
		code int
		msg  string
	}{
		{"bad token", ServerJoinRequest{Token: "nope.cahash", Name: "s2", PeerURL: peer, Hosts: good.Hosts}, 401, "join token is invalid"},
		{"name of a live replica", ServerJoinRequest{Token: good.Token, Name: "s1", PeerURL: peer, Hosts: good.Hosts}, 409, `is already a member: join this machine under another --name`},
		{"bad name", ServerJoinRequest{Token: good.Token, Name: "S 2", PeerURL: peer, Hosts: good.Hosts}, 400, "server name"},
		{"plain http peer", ServerJoinRequest{Token: good.Token, Name: "s2", PeerURL: "http://127.0.0.1:1", Hosts: good.Hosts}, 400, "must be https://ADDRESS:PORT"},
		{"external etcd joiner", ServerJoinRequest{Token: good.Token, Name: "s2", Hosts: good.Hosts}, 400, "without --etcd-endpoints"},
		{"no hosts", ServerJoinRequest{Token: good.Token, Name: "s2", PeerURL: peer}, 400, "hosts must list"},
	} {
		code, body := post(c.req)
		if code != c.code || !strings.Contains(string(body), c.msg) {
			t.Errorf("%s: %d %s; want %d %q", c.name, code, body, c.code, c.msg)
		}
	}
	if ms, err := st.Members(ctx); err != nil || len(ms) != 1 {
		t.Fatalf("refused joins changed the members: %+v, %v", ms, err)
	}

	// The token survived the refusals above; it buys one join.
	code, body := post(good)
	if code != http.StatusOK {
		t.Fatalf("join: %d %s", code, body)
	}
	var resp ServerJoinResponse
	must(t, json.Unmarshal(body, &resp))
	if err := pki.InstallBundle(t.TempDir(), resp.Bundle); err != nil {
		t.Errorf("the bundle does not install: %v", err)
	}
	if !strings.Contains(resp.InitialCluster, "s2="+peer) || strings.Count(resp.InitialCluster, "=") != 2 {
		t.Errorf("initial cluster %q", resp.InitialCluster)
	}
	ms, err := st.Members(ctx)
	if err != nil || len(ms) != 2 {
		t.Fatalf("members after the join: %+v, %v", ms, err)
	}
	if code, body := post(good); code != http.StatusUnauthorized {
		t.Errorf("the token joined twice: %d %s", code, body)
	}

	// A cluster on an external etcd gives no etcd seat.
	ext := httptest.NewServer(New(Config{PKIDir: pkiDir, Name: "s1"}, st, slog.New(slog.DiscardHandler)))
	defer ext.Close()
	b, _ := json.Marshal(ServerJoinRequest{Token: token(), Name: "s3", PeerURL: peer, Hosts: good.Hosts})
	r, err := http.Post(ext.URL+ServerJoinPath, "application/json", bytes.NewReader(b))
	must(t, err)
	r.Body.Close()
	if r.StatusCode != http.StatusBadRequest {
		t.Errorf("embedded joiner of an external-etcd cluster: %d", r.StatusCode)
	}
}
