package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/client"
	"github.com/shoalvm/shoal/internal/pki"
	"github.com/shoalvm/shoal/internal/store"
	"github.com/shoalvm/shoal/internal/store/storetest"
)

// TestRunExternalEtcdTLS runs a control plane ('shoal server') against
// Debian's etcd with TLS and client certificates: it serves, and its
// cluster status shows that etcd. Bad TLS settings stop it at once, with
// nothing made.
func TestRunExternalEtcdTLS(t *testing.T) {
	e := storetest.StartExternalEtcd(t)
	log := slog.New(slog.DiscardHandler)
	dir := t.TempDir()
	o := Options{DataDir: filepath.Join(dir, "data"), Listen: fmt.Sprintf("127.0.0.1:%d", storetest.FreePort(t)), Host: "s1",
		EtcdEndpoints: []string{e.Endpoint}, EtcdTLS: e.TLS, NoAgent: true}

	bad := o
	bad.EtcdTLS.Key = ""
	err := Run(context.Background(), log, bad, nil)
	if !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), "--etcd-cert and --etcd-key go together") {
		t.Fatalf("a client certificate without its key: %v", err)
	}
	if _, err := os.Stat(o.DataDir); !os.IsNotExist(err) {
		t.Fatalf("a start refused for its flags made the data dir: %v", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	infos := make(chan Info, 1)
	done := make(chan error, 1)
	go func() { done <- Run(ctx, log, o, func(i Info) { infos <- i }) }()
	t.Cleanup(func() { cancel(); <-done }) // before etcd is killed
	var info Info
	select {
	case info = <-infos:
	case err := <-done:
		t.Fatalf("the server did not start against etcd over TLS: %v\netcd:\n%s", err, e.Log())
	case <-time.After(3 * time.Minute):
		t.Fatal("the server did not start within 3 minutes")
	}
	caPEM, err := os.ReadFile(filepath.Join(o.DataDir, "pki", pki.CACert))
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(info.API, info.Token, caPEM)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := c.ClusterStatus(ctx)
	if err != nil || len(cs.Members) != 1 || cs.Members[0].Endpoint != e.Endpoint || cs.Members[0].DBSizeBytes == 0 ||
		cs.QuotaBytes != store.DefaultQuotaBytes || len(cs.Alarms) != 0 {
		t.Fatalf("cluster status: %+v, %v", cs, err)
	}
	if _, err := os.Stat(filepath.Join(o.DataDir, "etcd")); !os.IsNotExist(err) {
		t.Fatal("an embedded etcd data dir was made although --etcd-endpoints was given")
	}
}
