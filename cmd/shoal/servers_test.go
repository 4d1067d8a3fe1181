package main

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/client"
)

// TestCLIServersFailover: with the configured server down, the CLI turns
// to the other replica of its settings, then remembers the cluster's
// replicas. No root, no QEMU: a fake API server.
func TestCLIServersFailover(t *testing.T) {
	var self string
	srv, ca := newServerTLS(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/v1/vms":
			_ = json.NewEncoder(w).Encode([]api.VM{})
		case "/v1/cluster/servers":
			_ = json.NewEncoder(w).Encode([]api.Server{{Name: "s2", URL: self, Leader: true}, {Name: "s3", URL: "https://10.9.9.9:7443"}})
		default:
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	defer srv.Close()
	self = srv.URL
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := "https://" + l.Addr().String()
	l.Close()

	path := filepath.Join(t.TempDir(), "config.json")
	t.Setenv("SHOAL_CONFIG", path)
	t.Setenv("SHOAL_SERVER", "")
	t.Setenv("SHOAL_TOKEN", "")
	if err := client.SaveConfig(path, client.Config{Server: down, Servers: []string{srv.URL}, Token: "tok", CA: ca}); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) error {
		root := newRoot()
		root.SetArgs(args)
		return root.ExecuteContext(context.Background())
	}

	if err := run("vm", "list", "-o", "json"); err != nil {
		t.Fatalf("vm list with the first server down: %v", err)
	}
	got, err := client.LoadConfig(path)
	want := client.Config{Server: down, Servers: []string{srv.URL, "https://10.9.9.9:7443"}, Token: "tok", CA: ca}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("config after the failover: %+v, %v; want the cluster's replicas after the own server", got, err)
	}

	// An explicit --server is used alone, and never written back.
	if err := client.SaveConfig(path, client.Config{Server: down, Token: "tok", CA: ca}); err != nil {
		t.Fatal(err)
	}
	if err := run("--server", srv.URL, "cluster", "servers", "-o", "json"); err != nil {
		t.Fatalf("cluster servers --server: %v", err)
	}
	if got, _ := client.LoadConfig(path); got.Servers != nil {
		t.Fatalf("--server wrote servers to the config: %+v", got)
	}
	if err := run("--server", down, "vm", "list"); err == nil {
		t.Fatal("--server naming a down server: no error")
	}
	// 'cluster servers' with the file's settings remembers the list.
	if err := client.SaveConfig(path, client.Config{Server: srv.URL, Token: "tok", CA: ca}); err != nil {
		t.Fatal(err)
	}
	if err := run("cluster", "servers"); err != nil {
		t.Fatalf("cluster servers: %v", err)
	}
	if got, _ := client.LoadConfig(path); !reflect.DeepEqual(got.Servers, []string{"https://10.9.9.9:7443"}) {
		t.Fatalf("servers remembered: %v", got.Servers)
	}
}
