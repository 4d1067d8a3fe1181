package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/client"
	"github.com/shoalvm/shoal/internal/server"
	"github.com/shoalvm/shoal/internal/store"
	"github.com/shoalvm/shoal/internal/store/storetest"
)

// TestCLIClusterStatus: 'shoal cluster status' shows the etcd member's
// database against the quota, as a table and as JSON with stable
// snake_case fields. No root, no QEMU: a real API server over a
// throwaway etcd.
func TestCLIClusterStatus(t *testing.T) {
	st := storetest.New(t)
	if err := st.PutToken(context.Background(), "tok", store.TokenInfo{Name: "admin", Role: "admin", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	srv, ca := newServerTLS(t, server.New(server.Config{ImageDir: t.TempDir()}, st, slog.New(slog.DiscardHandler)))
	path := filepath.Join(t.TempDir(), "config.json")
	if err := client.SaveConfig(path, client.Config{Server: srv.URL, Token: "tok", CA: ca}); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(shoalBin, args...)
		cmd.Env = append(os.Environ(), "SHOAL_CONFIG="+path, "SHOAL_SERVER=", "SHOAL_TOKEN=")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("shoal %v: %v\n%s", args, err, out)
		}
		return string(out)
	}

	var got map[string]any
	out := run("cluster", "status", "-o", "json")
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("cluster status -o json: %v\n%s", err, out)
	}
	members, _ := got["members"].([]any)
	if got["quota_bytes"] != float64(store.DefaultQuotaBytes) || len(members) != 1 || got["alarms"] == nil {
		t.Fatalf("cluster status -o json: %s", out)
	}
	m, _ := members[0].(map[string]any)
	for _, k := range []string{"name", "id", "endpoint", "leader", "learner", "db_size_bytes", "db_size_in_use_bytes"} {
		if _, ok := m[k]; !ok {
			t.Errorf("member without %q: %s", k, out)
		}
	}
	if m["leader"] != true || m["db_size_bytes"].(float64) <= 0 {
		t.Errorf("member: %s", out)
	}

	out = run("cluster", "status")
	for _, want := range []string{"MEMBER", "DB SIZE", "IN USE", "OF QUOTA", "quota: 2.0 GiB per member", "alarms: none"} {
		if !strings.Contains(out, want) {
			t.Errorf("cluster status table without %q:\n%s", want, out)
		}
	}
}
