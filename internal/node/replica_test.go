package node

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoalvm/shoal/internal/store"
)

func TestDefaultPeerURL(t *testing.T) {
	for _, c := range []struct {
		o    Options
		want string
	}{
		{Options{Listen: "0.0.0.0:7443", Advertise: "https://10.0.0.2:7443"}, "https://10.0.0.2:7380"},
		{Options{Listen: "10.0.0.3:7443"}, "https://10.0.0.3:7380"},
		{Options{Listen: "0.0.0.0:7443", Advertise: "https://s2.example:7443"}, "https://s2.example:7380"},
		{Options{Listen: "[fd00::2]:7443"}, "https://[fd00::2]:7380"},
		{Options{Listen: "0.0.0.0:7443"}, defaultEtcdPeer},
	} {
		if got := defaultPeerURL(c.o); got != c.want {
			t.Errorf("defaultPeerURL(%+v) = %s; want %s", c.o, got, c.want)
		}
	}
}

// TestEnsureReplica covers how a server decides, before its etcd starts,
// whether it joins, reopens or founds a cluster, and at which peer URL.
func TestEnsureReplica(t *testing.T) {
	ctx, log := context.Background(), slog.New(slog.DiscardHandler)
	write := func(dir, rec string) {
		if err := os.WriteFile(filepath.Join(dir, replicaFile), []byte(rec), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ensure := func(o Options) (Options, etcdCluster, error) {
		c, err := ensureReplica(ctx, log, &o, filepath.Join(o.DataDir, "pki"))
		return o, c, err
	}

	// A new server founds a cluster on loopback; a recorded peer URL is
	// kept unless another is given.
	dir := t.TempDir()
	o, c, err := ensure(Options{DataDir: dir, Listen: "10.0.0.1:7443"})
	if err != nil || o.EtcdPeer != defaultEtcdPeer || c != (etcdCluster{}) {
		t.Errorf("new server: %q %+v %v", o.EtcdPeer, c, err)
	}
	write(dir, `{"peer_url":"https://10.0.0.1:7380"}`)
	if o, _, err := ensure(Options{DataDir: dir}); err != nil || o.EtcdPeer != "https://10.0.0.1:7380" {
		t.Errorf("recorded peer URL: %q %v", o.EtcdPeer, err)
	}
	if o, _, err := ensure(Options{DataDir: dir, EtcdPeer: "https://10.0.0.9:7380"}); err != nil || o.EtcdPeer != "https://10.0.0.9:7380" {
		t.Errorf("given peer URL: %q %v", o.EtcdPeer, err)
	}
	// A founder is not turned into a joiner.
	if _, _, err := ensure(Options{DataDir: dir, Join: "https://10.0.0.2:7443", JoinToken: "a.b"}); err == nil || !strings.Contains(err.Error(), "already holds a cluster of its own") {
		t.Errorf("--join over a founder's data: %v", err)
	}
	bare := t.TempDir()
	if err := os.MkdirAll(filepath.Join(bare, "etcd", "member"), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ensure(Options{DataDir: bare, Join: "https://10.0.0.2:7443", JoinToken: "a.b"}); err == nil || !strings.Contains(err.Error(), "already holds a cluster of its own") {
		t.Errorf("--join over etcd data: %v", err)
	}

	// A replica that joined restarts from its record, --join or not.
	joined := t.TempDir()
	write(joined, `{"server":"https://10.0.0.1:7443","initial_cluster":"a=https://10.0.0.1:7380,b=https://10.0.0.2:7380","peer_url":"https://10.0.0.2:7380"}`)
	for _, join := range []string{"", "https://10.0.0.1:7443", "https://elsewhere:7443"} {
		o, c, err := ensure(Options{DataDir: joined, Join: join})
		if err != nil || o.EtcdPeer != "https://10.0.0.2:7380" || c.state != store.ClusterExisting || !strings.HasPrefix(c.initial, "a=") {
			t.Errorf("restart of a replica (--join %q): %q %+v %v", join, o.EtcdPeer, c, err)
		}
	}

	// Joining needs a whole token and a reachable server.
	for _, c := range []struct{ token, join, err string }{
		{"", "https://127.0.0.1:1", "pass --token"},
		{"nodot", "https://127.0.0.1:1", "malformed"},
		{"a.b", "http://127.0.0.1:1", "must be https://SERVER:PORT"},
		{"a.b", "https://127.0.0.1:1", "cannot reach https://127.0.0.1:1"},
	} {
		_, _, err := ensure(Options{DataDir: t.TempDir(), Listen: "127.0.0.1:7443", Join: c.join, JoinToken: c.token})
		if err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("join %s with token %q: %v; want %q", c.join, c.token, err, c.err)
		}
	}
}
