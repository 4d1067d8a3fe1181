package client

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
)

// Config is the CLI's connection settings file.
type Config struct {
	// Server is the server to try first: https://HOST:PORT or
	// unix:///PATH (or several, comma-separated).
	Server string `json:"server"`
	// Servers are the control plane's other replicas, tried in turn when
	// Server cannot be reached ('shoal cluster servers' fills them in, and
	// the CLI refreshes them after it had to turn to one).
	Servers []string `json:"servers,omitempty"`
	Token   string   `json:"token"`
	CA      string   `json:"ca,omitempty"` // PEM of the cluster CA
}

// URLs returns the servers to try, in order, without duplicates.
func (c Config) URLs() []string {
	var out []string
	for _, u := range append(SplitServers(c.Server), c.Servers...) {
		if u != "" && !slices.Contains(out, u) {
			out = append(out, u)
		}
	}
	return out
}

// ConfigPath returns $SHOAL_CONFIG, else ~/.config/shoal/config.json.
func ConfigPath() string {
	if p := os.Getenv("SHOAL_CONFIG"); p != "" {
		return p
	}
	home, err := os.UserHomeDir()
	if err != nil {
		home = "/root"
	}
	return filepath.Join(home, ".config", "shoal", "config.json")
}

// LoadConfig reads the settings file (a missing file is an empty config)
// and applies SHOAL_SERVER and SHOAL_TOKEN on top (SHOAL_SERVER replaces
// the file's servers, the other replicas too).
func LoadConfig(path string) (Config, error) {
	c, err := readConfigFile(path)
	if err != nil {
		return c, err
	}
	if v := os.Getenv("SHOAL_SERVER"); v != "" {
		c.Server, c.Servers = v, nil
	}
	if v := os.Getenv("SHOAL_TOKEN"); v != "" {
		c.Token = v
	}
	return c, nil
}

// readConfigFile reads the settings file alone; a missing file is an
// empty config.
func readConfigFile(path string) (Config, error) {
	var c Config
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return c, fmt.Errorf("read %s: %w", path, err)
	}
	if err == nil {
		if err := json.Unmarshal(b, &c); err != nil {
			return c, fmt.Errorf("parse %s: %w", path, err)
		}
	}
	return c, nil
}

// SaveConfig writes the settings file with mode 0600, atomically.
func SaveConfig(path string, c Config) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("config dir: %w", err)
	}
	b, _ := json.MarshalIndent(c, "", "  ")
	tmp := path + ".tmp"
	_ = os.Remove(tmp) // a leftover could carry looser permissions
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// SaveServers records the control plane's replicas (urls) in the settings
// file at path, as the servers to try after its own Server, if the file
// still names the server and CA of loaded (the settings the list was
// fetched with); it changes nothing else. It reports whether it wrote the
// file.
func SaveServers(path string, loaded Config, urls []string) (bool, error) {
	onFile, err := readConfigFile(path)
	if err != nil || onFile.Server != loaded.Server || onFile.CA != loaded.CA {
		return false, err
	}
	var others []string
	first := SplitServers(onFile.Server)
	for _, u := range urls {
		if !slices.Contains(first, u) && !slices.Contains(others, u) {
			others = append(others, u)
		}
	}
	if len(others) == 0 || slices.Equal(others, onFile.Servers) {
		return false, nil
	}
	onFile.Servers = others
	return true, SaveConfig(path, onFile)
}
