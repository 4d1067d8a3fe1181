package client

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// These tests use t.Setenv, so none of them runs in parallel.

func clearEnv(t *testing.T) {
	t.Helper()
	t.Setenv("SHOAL_SERVER", "")
	t.Setenv("SHOAL_TOKEN", "")
	t.Setenv("SHOAL_CONFIG", "")
}

func TestSaveAndLoadConfig(t *testing.T) {
	clearEnv(t)
	dir := filepath.Join(t.TempDir(), "home", ".config", "shoal")
	path := filepath.Join(dir, "config.json")
	want := Config{Server: "https://127.0.0.1:7443", Token: "s3cret", CA: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"}
	must(t, SaveConfig(path, want))

	fi, err := os.Stat(path)
	must(t, err)
	if m := fi.Mode().Perm(); m != 0o600 {
		t.Errorf("config mode %o, want 600: it holds the token", m)
	}
	di, err := os.Stat(dir)
	must(t, err)
	if m := di.Mode().Perm(); m != 0o700 {
		t.Errorf("config dir mode %o, want 700", m)
	}
	if _, err := os.Stat(path + ".tmp"); !os.IsNotExist(err) {
		t.Errorf("temporary file left behind: %v", err)
	}
	got, err := LoadConfig(path)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("LoadConfig = %+v, %v; want %+v", got, err, want)
	}

	// Saving again over a file someone made world-readable tightens it.
	must(t, os.Chmod(path, 0o644))
	want.Token = "rotated"
	must(t, SaveConfig(path, want))
	fi, err = os.Stat(path)
	must(t, err)
	if m := fi.Mode().Perm(); m != 0o600 {
		t.Errorf("config mode after re-save %o, want 600", m)
	}
	if got, _ := LoadConfig(path); got.Token != "rotated" {
		t.Errorf("token after re-save %q", got.Token)
	}
	b, err := os.ReadFile(path)
	must(t, err)
	if !strings.HasSuffix(string(b), "}\n") || !strings.Contains(string(b), `"server": "https://127.0.0.1:7443"`) {
		t.Errorf("config file is not indented JSON with a final newline:\n%s", b)
	}
}

func TestSaveConfigLeftoverTempFile(t *testing.T) {
	clearEnv(t)
	path := filepath.Join(t.TempDir(), "config.json")
	must(t, os.WriteFile(path+".tmp", []byte("junk"), 0o644))
	must(t, SaveConfig(path, Config{Server: "unix:///x.sock", Token: "t"}))
	fi, err := os.Stat(path)
	must(t, err)
	if m := fi.Mode().Perm(); m != 0o600 {
		t.Fatalf("config mode %o, want 600", m)
	}
}

func TestLoadConfigMissingFile(t *testing.T) {
	clearEnv(t)
	got, err := LoadConfig(filepath.Join(t.TempDir(), "nope", "config.json"))
	if err != nil || !reflect.DeepEqual(got, Config{}) {
		t.Fatalf("LoadConfig(missing) = %+v, %v; want an empty config and no error", got, err)
	}

	t.Setenv("SHOAL_SERVER", "unix:///run/shoal.sock")
	t.Setenv("SHOAL_TOKEN", "from-env")
	got, err = LoadConfig(filepath.Join(t.TempDir(), "config.json"))
	if err != nil || !reflect.DeepEqual(got, Config{Server: "unix:///run/shoal.sock", Token: "from-env"}) {
		t.Fatalf("LoadConfig(missing) with env = %+v, %v", got, err)
	}
}

func TestLoadConfigEnvOverrides(t *testing.T) {
	clearEnv(t)
	path := filepath.Join(t.TempDir(), "config.json")
	file := Config{Server: "https://10.0.0.1:7443", Token: "file-token", CA: "PEM"}
	must(t, SaveConfig(path, file))

	tests := []struct {
		server, token string
		want          Config
	}{
		{"", "", file},
		{"https://10.0.0.2:7443", "", Config{Server: "https://10.0.0.2:7443", Token: "file-token", CA: "PEM"}},
		{"", "env-token", Config{Server: "https://10.0.0.1:7443", Token: "env-token", CA: "PEM"}},
		{"unix:///s.sock", "env-token", Config{Server: "unix:///s.sock", Token: "env-token", CA: "PEM"}},
	}
	for _, tc := range tests {
		t.Setenv("SHOAL_SERVER", tc.server)
		t.Setenv("SHOAL_TOKEN", tc.token)
		got, err := LoadConfig(path)
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("env %q %q: LoadConfig = %+v, %v; want %+v", tc.server, tc.token, got, err, tc.want)
		}
	}
	// The environment never writes back to the file.
	t.Setenv("SHOAL_SERVER", "")
	t.Setenv("SHOAL_TOKEN", "")
	if got, _ := LoadConfig(path); !reflect.DeepEqual(got, file) {
		t.Errorf("file changed to %+v", got)
	}
}

func TestLoadConfigErrors(t *testing.T) {
	clearEnv(t)
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	must(t, os.WriteFile(bad, []byte(`{"server": "https://x:1",`), 0o600))
	// The environment does not paper over a broken file.
	t.Setenv("SHOAL_SERVER", "https://y:1")
	t.Setenv("SHOAL_TOKEN", "t")
	if _, err := LoadConfig(bad); err == nil || !strings.Contains(err.Error(), "parse "+bad) {
		t.Errorf("bad JSON: got %v, want an error naming the file", err)
	}
	must(t, os.WriteFile(bad, []byte(`["not", "an", "object"]`), 0o600))
	if _, err := LoadConfig(bad); err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("JSON array: got %v, want an error naming the file", err)
	}
	// A directory where the file should be cannot be read.
	if _, err := LoadConfig(dir); err == nil || !strings.Contains(err.Error(), "read "+dir) {
		t.Errorf("directory: got %v, want a read error naming it", err)
	}
}

func TestConfigPath(t *testing.T) {
	clearEnv(t)
	home := t.TempDir()
	t.Setenv("HOME", home)
	if got, want := ConfigPath(), filepath.Join(home, ".config", "shoal", "config.json"); got != want {
		t.Errorf("ConfigPath() = %q, want %q", got, want)
	}
	t.Setenv("SHOAL_CONFIG", "/etc/shoal/cli.json")
	if got := ConfigPath(); got != "/etc/shoal/cli.json" {
		t.Errorf("ConfigPath() with SHOAL_CONFIG = %q", got)
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
