package lab

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
)

// migrationRounds is how many live migrations each VM of
// TestLabMigration makes, alternating between the two hosts.
const migrationRounds = 20

// TestLabMigration is the live-migration issue's check: in a lab of two
// hosts, a client polls a VM every 10 ms while it migrates back and forth
// 20 times, once with its disk on the shared pool and once on the local
// pool (mirrored over NBD). The client sees no failed request, one boot,
// a request count and a disk counter that go on without a gap; each
// migration is in the VM's history with its figures; and nothing of the
// VM is left on the host it left. A few more go in clear (--insecure),
// straight between the two QEMUs instead of through the agents' TLS.
func TestLabMigration(t *testing.T) {
	f := startLab(t, 2)
	for _, tc := range []struct {
		name, pool string
		rounds     int
		args       []string
	}{
		{"shared", "shared", migrationRounds, nil},
		{"local", "local", migrationRounds, nil},
		{"local-insecure", "local", 4, []string{"--insecure"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pool := tc.pool
			name := "mig-" + tc.name
			v := f.createServing(name, "--pool", pool, "--host", "host1")
			p, err := StartPoller(f.ctx, "client", v.IP, 10*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Stop()
			time.Sleep(500 * time.Millisecond)
			for i := 0; i < tc.rounds; i++ {
				to := "host2"
				if i%2 == 1 {
					to = "host1"
				}
				out := f.shoal(append([]string{"vm", "migrate", name, "--to", to}, tc.args...)...)
				got := f.vm(name)
				if got.Host != to || got.State != api.StateRunning {
					t.Fatalf("migration %d: vm is %s on %s, want running on %s (%s)", i+1, got.State, got.Host, to, out)
				}
				if len(got.Migrations) == 0 || got.Migrations[0].Result != api.MigrationCompleted || got.Migrations[0].To != to {
					t.Fatalf("migration %d: history %+v", i+1, got.Migrations)
				}
				if m := got.Migrations[0]; m.TotalMs <= 0 || m.Bytes <= 0 || m.DowntimeMs <= 0 || m.Shared != (pool == "shared") || m.Insecure != (tc.args != nil) {
					t.Errorf("migration %d: figures missing: %+v", i+1, m)
				}
				f.requireClean(v.ID, to)
				time.Sleep(300 * time.Millisecond)
			}
			time.Sleep(500 * time.Millisecond)
			r := p.Stop()
			t.Logf("%s, %d migrations: %s", tc.name, tc.rounds, r)
			if r.Failed > 0 {
				t.Errorf("%d of %d requests failed: %v", r.Failed, r.Requests, r.Errors)
			}
			if len(r.Boots) != 1 {
				t.Errorf("the VM booted again: boot ids %v", r.Boots)
			}
			if r.CountJumps > 0 || r.DiskJumps > 0 {
				t.Errorf("count or disk counter did not go on one by one: %d count jumps, %d disk jumps", r.CountJumps, r.DiskJumps)
			}
			if r.Requests < tc.rounds*5 {
				t.Errorf("only %d requests were made", r.Requests)
			}
			hist := f.vm(name).Migrations
			if want := min(tc.rounds, 10); len(hist) < want {
				t.Errorf("vm show lists %d migrations, want the last %d", len(hist), want)
			}
			f.shoal("vm", "delete", name, "--force")
			f.requireClean(v.ID, "")
		})
	}
}

// TestLabMigrationDirtyGuest: a guest that rewrites 16 MiB of its memory
// without end (about as fast as a migration stream under TCG carries it)
// still migrates, with auto-converge (the CLI's default) and with a
// switch to post-copy, and keeps serving its client throughout.
func TestLabMigrationDirtyGuest(t *testing.T) {
	f := startLab(t, 2)
	userData := filepath.Join(t.TempDir(), "dirty.sh")
	if err := os.WriteFile(userData, []byte(dirtyScript), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		args     []string
		postcopy bool
	}{
		{"auto-converge", nil, false},
		// Capped, so that pre-copy cannot catch up before the switch.
		{"postcopy", []string{"--auto-converge=false", "--postcopy-after", "1s", "--bandwidth", "32M"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.postcopy {
				// The target's QEMU runs unprivileged: post-copy needs this.
				allowUnprivilegedUserfaultfd(t)
			}
			c := f.startCase(t, "dirty-"+tc.name, "shared", "--user-data", userData)
			f.waitDirtying(c.vm.IP)
			for _, to := range []string{"host2", "host1"} {
				out := f.shoal(append([]string{"vm", "migrate", c.name, "--to", to}, tc.args...)...)
				t.Logf("%s", strings.TrimSpace(out))
				v := f.vm(c.name)
				if v.Host != to || v.State != api.StateRunning {
					t.Fatalf("vm is %s on %s, want running on %s", v.State, v.Host, to)
				}
				// More than an idle guest's ~92 MiB: pages were sent again,
				// so the guest did dirty them. (Post-copy sends each page
				// once more at most.)
				if m := v.Migrations[0]; (!tc.postcopy && m.Bytes < 100<<20) || m.Postcopy != tc.postcopy {
					t.Errorf("migration moved %d bytes (the guest has %d MiB), post-copy %v: want over 100 MiB, post-copy %v",
						m.Bytes, v.MemoryMiB, m.Postcopy, tc.postcopy)
				}
			}
			c.end(t, "host1", api.MigrationCompleted)
		})
	}
}

// allowUnprivilegedUserfaultfd sets sysctl vm.unprivileged_userfaultfd to
// 1 for the test, as a host that takes post-copy migrations needs (see
// MIGRATION.md), and puts it back after.
func allowUnprivilegedUserfaultfd(t *testing.T) {
	t.Helper()
	const p = "/proc/sys/vm/unprivileged_userfaultfd"
	old, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("post-copy: %v", err)
	}
	if err := os.WriteFile(p, []byte("1"), 0o644); err != nil {
		t.Fatalf("post-copy: %v", err)
	}
	t.Cleanup(func() { _ = os.WriteFile(p, old, 0o644) })
}
