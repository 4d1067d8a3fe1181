package client

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// Config is the CLI's connection settings file.
type Config struct {
	Server string `json:"server"`
	Token  string `json:"token"`
	CA     string `json:"ca,omitempty"` // PEM of the cluster CA
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
// and applies SHOAL_SERVER and SHOAL_TOKEN on top.
func LoadConfig(path string) (Config, error) {
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
	if v := os.Getenv("SHOAL_SERVER"); v != "" {
		c.Server = v
	}
	if v := os.Getenv("SHOAL_TOKEN"); v != "" {
		c.Token = v
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
