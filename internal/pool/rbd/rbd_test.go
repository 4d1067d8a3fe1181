package rbd

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/shoalvm/shoal/internal/api"
)

func TestNewRefusesBadConfig(t *testing.T) {
	dir := t.TempDir()
	kr := filepath.Join(dir, "kr")
	if err := os.WriteFile(kr, []byte("[client.shoal]\n\tkey = AQ==\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	good := Config{Monitors: []string{"10.0.0.1:3300"}, Pool: "rbd", User: "shoal", Keyring: kr, Dir: filepath.Join(dir, "d")}
	if _, err := New(good); err != nil {
		t.Fatalf("a good config: %v", err)
	}
	for name, mod := range map[string]func(*Config){
		"no monitors":         func(c *Config) { c.Monitors = nil },
		"monitor sans port":   func(c *Config) { c.Monitors = []string{"10.0.0.1"} },
		"bad host address":    func(c *Config) { c.Hosts = map[string]string{"h1": "h1.example"} },
		"no pool":             func(c *Config) { c.Pool = "" },
		"missing keyring":     func(c *Config) { c.Keyring = filepath.Join(dir, "none") },
		"user not in keyring": func(c *Config) { c.User = "other" },
	} {
		c := good
		mod(&c)
		if _, err := New(c); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("%s: %v, want invalid", name, err)
		}
	}
}

func TestKeyFileAndHostAddr(t *testing.T) {
	dir := t.TempDir()
	kr := filepath.Join(dir, "kr")
	key := "AQBeCxdruys/FxAAEGkQa6YmkX3Ad+pHh+/Gbw=="
	if err := os.WriteFile(kr, []byte("[client.admin]\n\tkey = AQ==\n[client.shoal]\n\tkey = "+key+"\n\tcaps mon = \"profile rbd\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{Monitors: []string{"10.0.0.1:3300"}, Pool: "rbd", User: "shoal", Keyring: kr,
		Dir: filepath.Join(dir, "d"), Hosts: map[string]string{"h4": "10.0.0.4", "h6": "fd00::6"}})
	if err != nil {
		t.Fatal(err)
	}
	q := d.QEMU("ab12")
	if q.Image != "vol-ab12" || q.Pool != "rbd" || q.User != "shoal" || q.Monitors[0] != "10.0.0.1:3300" {
		t.Fatalf("QEMU view %+v", q)
	}
	b, err := os.ReadFile(q.KeyFile)
	if err != nil || string(b) != key {
		t.Fatalf("key file %q, %v; want the key alone", b, err)
	}
	if st, _ := os.Stat(q.KeyFile); st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v", st.Mode())
	}
	for host, want := range map[string]string{"h4": "10.0.0.4:0/0", "h6": "[fd00::6]:0/0"} {
		if got, err := d.hostAddr(host); err != nil || got != want {
			t.Errorf("blocklist entry of %s: %q, %v; want %q", host, got, err, want)
		}
	}
	if _, err := d.hostAddr("h9"); !errors.Is(err, api.ErrInvalid) {
		t.Errorf("unknown host: %v", err)
	}
}
