package node

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
)

// joined is what an agent keeps of its join, in joined.json: the control
// plane's replicas, the one to try first in Server (the only field of
// earlier versions, which still read it).
type joined struct {
	Server  string   `json:"server"`
	Servers []string `json:"servers,omitempty"`
}

// urls returns the servers to try, Server first, without duplicates.
func (j joined) urls() []string {
	var out []string
	for _, u := range append([]string{j.Server}, j.Servers...) {
		u = strings.TrimRight(u, "/")
		if u != "" && !slices.Contains(out, u) {
			out = append(out, u)
		}
	}
	return out
}

// readJoined reads joined.json; ok is false if it is missing or unreadable.
func readJoined(path string) (joined, bool) {
	var j joined
	b, err := os.ReadFile(path)
	if err != nil || json.Unmarshal(b, &j) != nil || len(j.urls()) == 0 {
		return joined{}, false
	}
	return j, true
}

// writeJoined saves the servers (the one to try first, first) to
// joined.json, atomically.
func writeJoined(path string, servers []string) error {
	if len(servers) == 0 {
		return nil
	}
	b, _ := json.Marshal(joined{Server: servers[0], Servers: servers})
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
