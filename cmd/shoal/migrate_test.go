package main

import (
	"strings"
	"testing"

	"github.com/shoalvm/shoal/internal/api"
)

// TestMigrationSummary: the last line of 'shoal vm migrate' and the
// history in 'shoal vm show' carry the figures a user asks for.
func TestMigrationSummary(t *testing.T) {
	for _, tc := range []struct {
		rec  api.MigrationRecord
		want []string
	}{
		{api.MigrationRecord{VM: "web1", From: "host1", To: "host2", Result: api.MigrationCompleted,
			TotalMs: 1520, DowntimeMs: 31, Bytes: 100 << 20},
			[]string{"vm web1 migrated from host1 to host2 in 1.52s", "downtime 31 ms", "100.0 MiB moved"}},
		{api.MigrationRecord{VM: "db", From: "host2", To: "host1", Result: api.MigrationCompleted,
			TotalMs: 3600, DowntimeMs: 62, Bytes: 300 << 20, DiskBytes: 1 << 30, Postcopy: true, Insecure: true},
			[]string{"in 3.6s", "(+ disk 1.0 GiB)", "post-copy", "unencrypted"}},
		{api.MigrationRecord{VM: "web1", From: "host1", To: "host2", Result: api.MigrationFailed,
			TotalMs: 4700, Error: "target host host2 is down"},
			[]string{"migration of vm web1 from host1 to host2 failed after 4.7s: target host host2 is down"}},
	} {
		got := migrationSummary(tc.rec)
		for _, w := range tc.want {
			if !strings.Contains(got, w) {
				t.Errorf("summary %q lacks %q", got, w)
			}
		}
	}
}
