package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestCLIEtcdTLSFlags: 'shoal server' refuses bad TLS settings for an
// external etcd at once, in one line, and makes nothing.
func TestCLIEtcdTLSFlags(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	for _, tc := range []struct {
		flags []string
		want  string
	}{
		{[]string{"--etcd-endpoints", "https://127.0.0.1:2379"}, "https:// etcd endpoints need --etcd-cacert"},
		{[]string{"--etcd-endpoints", "https://127.0.0.1:2379", "--etcd-cacert", filepath.Join(dir, "ca.pem")}, "--etcd-cacert: open " + filepath.Join(dir, "ca.pem")},
		{[]string{"--etcd-endpoints", "https://127.0.0.1:2379", "--etcd-cacert", "x", "--etcd-cert", "y"}, "--etcd-cert and --etcd-key go together"},
		{[]string{"--etcd-cacert", "x"}, "are for an external etcd: give its --etcd-endpoints too"},
	} {
		cmd := exec.Command(shoalBin, append([]string{"server", "--data-dir", data, "--listen", "127.0.0.1:0", "--config", filepath.Join(dir, "c.json")}, tc.flags...)...)
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), tc.want) || strings.Count(strings.TrimSpace(string(out)), "\n") > 0 {
			t.Errorf("shoal server %v: %v\n%s\nwant one line with %q", tc.flags, err, out, tc.want)
		}
	}
	if _, err := os.Stat(data); !os.IsNotExist(err) {
		t.Errorf("refused starts made the data dir: %v", err)
	}
}
