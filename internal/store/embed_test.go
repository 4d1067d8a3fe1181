package store_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/pki"
	"github.com/shoalvm/shoal/internal/store"
	"github.com/shoalvm/shoal/internal/store/storetest"
)

// TestEmbeddedCluster grows an embedded etcd from one member to three,
// each joining through another (mutual TLS with one shared CA, as server
// replicas do), then loses a member: the other two keep serving, and the
// lost one reopens its data and catches up.
func TestEmbeddedCluster(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	log := slog.New(slog.DiscardHandler)
	base := t.TempDir()
	hosts := []string{"127.0.0.1", "localhost"}
	opts := make([]store.EmbedOptions, 3)
	for i := range opts {
		dir := filepath.Join(base, fmt.Sprintf("m%d", i+1))
		opts[i] = store.EmbedOptions{
			Dir: filepath.Join(dir, "etcd"), PKIDir: filepath.Join(dir, "pki"), Name: fmt.Sprintf("m%d", i+1),
			ClientURL: fmt.Sprintf("https://127.0.0.1:%d", storetest.FreePort(t)),
			PeerURL:   fmt.Sprintf("https://127.0.0.1:%d", storetest.FreePort(t)),
		}
	}
	if _, _, err := pki.Ensure(opts[0].PKIDir, hosts); err != nil {
		t.Fatal(err)
	}
	members := make([]*store.Embedded, 3)
	start := func(i int) {
		t.Helper()
		e, err := store.StartEmbedded(ctx, log, opts[i])
		if err != nil {
			t.Fatalf("start %s: %v", opts[i].Name, err)
		}
		members[i] = e
	}
	stop := func(i int) {
		if members[i] != nil {
			members[i].Close()
			members[i] = nil
		}
	}
	defer func() {
		for i := range members {
			stop(i)
		}
	}()
	start(0)
	// m2 joins through m1, m3 through m2.
	for i := 1; i < 3; i++ {
		via := store.New(members[i-1].Client())
		ic, err := via.AddMember(ctx, opts[i].Name, opts[i].PeerURL)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(ic, opts[i].Name+"="+opts[i].PeerURL) || strings.Count(ic, "=") != i+1 {
			t.Fatalf("initial cluster for %s: %q", opts[i].Name, ic)
		}
		b, err := pki.ServerBundle(opts[0].PKIDir, hosts)
		if err != nil {
			t.Fatal(err)
		}
		if err := pki.InstallBundle(opts[i].PKIDir, b); err != nil {
			t.Fatal(err)
		}
		opts[i].InitialCluster, opts[i].ClusterState = ic, store.ClusterExisting
		start(i)
	}
	st := func(i int) *store.Store { return store.New(members[i].Client()) }
	ms, err := st(2).Members(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 3 {
		t.Fatalf("members %+v", ms)
	}
	for _, m := range ms {
		if m.Learner || !m.Started() {
			t.Errorf("member %+v is a learner or never started", m)
		}
	}

	// Written on one member, read on another.
	if _, err := members[0].Client().Put(ctx, "/test/a", "1"); err != nil {
		t.Fatal(err)
	}
	if r, err := members[2].Client().Get(ctx, "/test/a"); err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "1" {
		t.Fatalf("read on m3: %v, %v", r, err)
	}

	// Every member answers for its upkeep, through one member's store
	// (which dials the others over mutual TLS), and defragments.
	statuses, err := members[0].Store().MemberStatuses(ctx)
	if err != nil || len(statuses) != 3 {
		t.Fatalf("member statuses: %+v, %v", statuses, err)
	}
	leaders := 0
	for _, m := range statuses {
		if m.Err != nil || m.DBSize == 0 || m.DBSizeInUse == 0 || m.Name == "" {
			t.Errorf("status of %s: %+v", m.Name, m)
		}
		if m.Leader {
			leaders++
		}
		if err := members[0].Store().Defragment(ctx, m.Endpoint); err != nil {
			t.Errorf("defragment %s: %v", m.Name, err)
		}
	}
	if leaders != 1 {
		t.Errorf("%d leaders among %+v", leaders, statuses)
	}
	// A client that reaches one member only (as when every member
	// advertises a loopback client URL) does not take it for the others.
	statuses, err = st(0).MemberStatuses(ctx)
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, m := range statuses {
		switch {
		case m.Err == nil:
			seen++
		case !strings.Contains(m.Err.Error(), "which reaches another member"):
			t.Errorf("status of %s: %v", m.Name, m.Err)
		}
	}
	if seen != 1 {
		t.Errorf("the in-process client saw %d members: %+v", seen, statuses)
	}

	// A started member's peer URL cannot be added again.
	if _, err := st(0).AddMember(ctx, "dup", opts[1].PeerURL); !errors.Is(err, api.ErrConflict) {
		t.Errorf("adding m2's peer URL again: %v", err)
	}

	// Lose the raft leader: the other two still serve.
	lost := 0
	for i, m := range members {
		if m.IsLeader() {
			lost = i
		}
	}
	stop(lost)
	a, b := (lost+1)%3, (lost+2)%3
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	if _, err := members[a].Client().Put(wctx, "/test/b", "2"); err != nil {
		t.Fatalf("write with %s down: %v", opts[lost].Name, err)
	}
	wcancel()
	if r, err := members[b].Client().Get(ctx, "/test/b"); err != nil || len(r.Kvs) != 1 {
		t.Fatalf("read with %s down: %v, %v", opts[lost].Name, r, err)
	}

	// The lost member restarts from its data (its options unchanged) and
	// catches up.
	start(lost)
	if r, err := members[lost].Client().Get(ctx, "/test/b"); err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "2" {
		t.Fatalf("read on the restarted %s: %v, %v", opts[lost].Name, r, err)
	}

	// A join that never started is reused by its retry; a second one
	// waits until the first runs.
	pending := fmt.Sprintf("https://127.0.0.1:%d", storetest.FreePort(t))
	ic1, err := st(a).AddMember(ctx, "m4", pending)
	if err != nil {
		t.Fatal(err)
	}
	if ic2, err := st(b).AddMember(ctx, "m4", pending); err != nil || ic2 != ic1 {
		t.Errorf("retried join: %q, %v; want %q", ic2, err, ic1)
	}
	if _, err := st(a).AddMember(ctx, "m5", fmt.Sprintf("https://127.0.0.1:%d", storetest.FreePort(t))); !errors.Is(err, api.ErrConflict) || !strings.Contains(err.Error(), pending) {
		t.Errorf("a second pending join: %v", err)
	}
	// The pending learner does not count towards the quorum.
	stop(b)
	wctx, wcancel = context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if _, err := members[a].Client().Put(wctx, "/test/c", "3"); err != nil {
		t.Fatalf("write with a learner pending and one member down: %v", err)
	}

	// The member that is down is removed for good: two voters are left.
	if err := st(a).RemoveMember(ctx, opts[b].Name); err != nil {
		t.Fatalf("remove %s: %v", opts[b].Name, err)
	}
	ms, err = st(a).Members(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.Name == opts[b].Name {
			t.Errorf("%s is still a member: %+v", opts[b].Name, ms)
		}
	}
	if err := st(a).RemoveMember(ctx, opts[b].Name); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("removing %s again: %v; want not found", opts[b].Name, err)
	}
}

// TestEmbeddedAdmitsOnlyServers: the cluster CA signs hosts' certificates
// too, but only a server's may use the embedded etcd's client or peer
// port.
func TestEmbeddedAdmitsOnlyServers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	o := store.EmbedOptions{
		Dir: filepath.Join(dir, "etcd"), PKIDir: filepath.Join(dir, "pki"), Name: "m1",
		ClientURL: fmt.Sprintf("https://127.0.0.1:%d", storetest.FreePort(t)),
		PeerURL:   fmt.Sprintf("https://127.0.0.1:%d", storetest.FreePort(t)),
	}
	if _, _, err := pki.Ensure(o.PKIDir, []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	e, err := store.StartEmbedded(ctx, slog.New(slog.DiscardHandler), o)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()

	serverTLS, err := pki.ClientConfig(o.PKIDir)
	if err != nil {
		t.Fatal(err)
	}
	hostDir := t.TempDir()
	csr, err := pki.NewCSR(hostDir, "host1", nil)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, err := pki.SignAgent(o.PKIDir, csr, "host1", []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(hostDir, pki.AgentCert), certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(hostDir, pki.CACert), readFile(t, filepath.Join(o.PKIDir, pki.CACert)), 0o600); err != nil {
		t.Fatal(err)
	}
	hostTLS, err := pki.AgentConfig(hostDir)
	if err != nil {
		t.Fatal(err)
	}
	get := func(tc *tls.Config, u string) error {
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Timeout: 10 * time.Second}
		resp, err := c.Get(u + "/version")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s", resp.Status)
		}
		return nil
	}
	for _, u := range []string{o.ClientURL, o.PeerURL} {
		if err := get(serverTLS, u); err != nil {
			t.Errorf("a server's certificate at %s: %v", u, err)
		}
		if err := get(hostTLS, u); err == nil {
			t.Errorf("a host's certificate was admitted at %s", u)
		}
	}
	// Through etcd's own client too: a host cannot read the keyspace.
	hc, err := store.ConnectTLS(ctx, []string{o.ClientURL}, hostTLS)
	if err == nil {
		defer hc.Close()
		rctx, rcancel := context.WithTimeout(ctx, 3*time.Second)
		_, err = hc.Get(rctx, "/shoal/", clientv3.WithPrefix())
		rcancel()
	}
	if err == nil {
		t.Fatal("a host's certificate read the cluster's state")
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
