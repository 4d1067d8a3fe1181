package node

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/shoalvm/shoal/internal/pki"
)

func TestJoinedServers(t *testing.T) {
	dir := t.TempDir()
	pkiDir := filepath.Join(dir, "pki")
	if err := os.MkdirAll(pkiDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(pkiDir, pki.AgentCert), []byte("cert"), 0o600); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "joined.json")
	log := slog.New(slog.DiscardHandler)
	o := AgentOptions{DataDir: dir, Host: "h1"}

	// joined.json of earlier versions: one server.
	if err := os.WriteFile(state, []byte(`{"server":"https://10.0.0.1:7443"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := ensureJoined(context.Background(), log, o, pkiDir)
	if err != nil || !slices.Equal(got, []string{"https://10.0.0.1:7443"}) {
		t.Fatalf("old form: %v, %v", got, err)
	}

	// The list, the one to try first first; "server" stays for older
	// versions.
	list := []string{"https://10.0.0.2:7443", "https://10.0.0.1:7443", "https://10.0.0.3:7443"}
	if err := writeJoined(state, list); err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	b, _ := os.ReadFile(state)
	if err := json.Unmarshal(b, &raw); err != nil || raw["server"] != "https://10.0.0.2:7443" {
		t.Fatalf("joined.json %s (%v): want server set to the first", b, err)
	}
	if fi, err := os.Stat(state); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("joined.json mode: %v %v", fi, err)
	}
	// Asking to join one of them again is no conflict.
	o.Join = "https://10.0.0.3:7443/"
	got, err = ensureJoined(context.Background(), log, o, pkiDir)
	if err != nil || !slices.Equal(got, list) {
		t.Fatalf("new form: %v, %v", got, err)
	}
}
