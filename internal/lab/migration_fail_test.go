package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/crashpoint"
)

// Bandwidths for migrations broken midway. At slowBandwidth, a tiny VM's
// migration (about 90 MiB of memory) lasts over ten seconds, time enough
// to break something; it may never converge while a client keeps the
// guest busy, which does not matter when the migration is meant to fail.
// At fastBandwidth it lasts a few seconds and converges.
const (
	slowBandwidth = "8M"
	fastBandwidth = "32M"
)

// TestLabMigrationFailures breaks live migrations midway, in every way
// the issue lists, and checks each time that the VM ends up running on
// exactly one host, still serving its client (same boot, no request
// lost), with nothing left behind on the other host, and that its history
// says what happened.
func TestLabMigrationFailures(t *testing.T) {
	f := startLab(t, 2)

	t.Run("cancel", func(t *testing.T) {
		c := f.startCase(t, "f-cancel", "shared")
		f.midMigration(t, c.name, "host2", slowBandwidth)
		out := f.shoal("vm", "migrate", c.name, "--cancel")
		if !strings.Contains(out, "cancelled") {
			t.Errorf("--cancel said %q", out)
		}
		c.end(t, "host1", api.MigrationCancelled)
	})

	t.Run("target-agent-killed", func(t *testing.T) {
		c := f.startCase(t, "f-tagent", "shared")
		f.midMigration(t, c.name, "host2", slowBandwidth)
		if err := Kill(f.ctx, f.log, f.dir, "host2"); err != nil {
			t.Fatal(err)
		}
		f.waitMigrationEnd(t, c.name)
		if err := Heal(f.ctx, f.log, f.dir, "host2"); err != nil {
			t.Fatal(err)
		}
		f.waitHostUp(t, "host2")
		c.end(t, "host1", api.MigrationFailed)
	})

	t.Run("target-agent-killed-before-launch", func(t *testing.T) {
		// The target publishes where it listens before it launches its
		// QEMU, so the source may have started already: the agent dies
		// at that point, and the source must fail the migration at once
		// and keep the guest running.
		c := f.startCase(t, "f-tlaunch", "local")
		f.migrateToCrash(t, c, "agent-migrate-in-before-launch", "target host host2")
		c.end(t, "host1", api.MigrationFailed)
	})

	t.Run("target-agent-killed-before-commit", func(t *testing.T) {
		// The whole VM has reached the target, whose agent dies before
		// its commit: the source must get the guest back, which it
		// cannot while the target's QEMU holds the shared disk's lock.
		c := f.startCase(t, "f-tcommit", "shared")
		// The source sees the target's agent go (the frame relay's
		// connection ends) and has the migration called off at once,
		// rather than when the control plane judges host2 down seconds
		// later: the guest is paused only briefly.
		f.migrateToCrash(t, c, "agent-migrate-in-before-commit", "stopped answering after the whole VM was sent")
		c.stall = 3 * time.Second
		c.end(t, "host1", api.MigrationFailed)
	})

	for _, pool := range []string{"shared", "local"} {
		t.Run("source-agent-killed-"+pool, func(t *testing.T) {
			// The streams go through the source's agent: without it the
			// migration fails, and QEMU keeps the guest running here.
			c := f.startCase(t, "f-sagent-"+pool, pool)
			f.midMigration(t, c.name, "host2", slowBandwidth)
			if err := Kill(f.ctx, f.log, f.dir, "host1"); err != nil {
				t.Fatal(err)
			}
			time.Sleep(3 * time.Second)
			if err := Heal(f.ctx, f.log, f.dir, "host1"); err != nil {
				t.Fatal(err)
			}
			f.waitHostUp(t, "host1")
			f.waitMigrationEnd(t, c.name)
			c.end(t, "host1", api.MigrationFailed)
		})
	}

	t.Run("target-partitioned", func(t *testing.T) {
		c := f.startCase(t, "f-part", "local")
		f.midMigration(t, c.name, "host2", slowBandwidth)
		if err := Fail(f.ctx, f.log, f.dir, "host2", Partition); err != nil {
			t.Fatal(err)
		}
		f.waitMigrationEnd(t, c.name)
		if err := Heal(f.ctx, f.log, f.dir, "host2"); err != nil {
			t.Fatal(err)
		}
		f.waitHostUp(t, "host2")
		c.end(t, "host1", api.MigrationFailed)
	})

	t.Run("server-restarted", func(t *testing.T) {
		c := f.startCase(t, "f-server", "shared")
		f.midMigration(t, c.name, "host2", fastBandwidth)
		if err := Kill(f.ctx, f.log, f.dir, "server"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second)
		if err := Revive(f.ctx, f.log, f.dir, "server"); err != nil {
			t.Fatal(err)
		}
		f.waitFor("the server", 30*time.Second, func() bool { _, err := f.try("host", "list"); return err == nil })
		f.waitMigrationEnd(t, c.name)
		c.end(t, "", "")
	})

	t.Run("target-disk-full", func(t *testing.T) {
		// host2's local pool is a file system too small for the VM's disk,
		// mounted where host2's agent sees it (its own mount namespace).
		pool := f.layout().Host(2) + "/pools/local"
		agent := mustLoad(t, f.dir).proc(hostProc(2)).Pid
		inAgent := func(args ...string) {
			t.Helper()
			argv := append([]string{"--target", fmt.Sprint(agent), "--mount", "--"}, args...)
			if out, err := exec.Command("nsenter", argv...).CombinedOutput(); err != nil {
				t.Fatalf("nsenter %v: %v %s", argv, err, out)
			}
		}
		inAgent("mkdir", "-p", pool)
		inAgent("mount", "-t", "tmpfs", "-o", "size=128k", "shoal-lab-full", pool)
		defer inAgent("umount", pool)
		c := f.startCase(t, "f-full", "local")
		out, err := f.try("vm", "migrate", c.name, "--to", "host2")
		if err == nil {
			t.Fatalf("migrating onto a full disk succeeded: %s", out)
		}
		if !strings.Contains(out, "space") {
			t.Errorf("the error does not say the disk is full: %s", out)
		}
		c.end(t, "host1", api.MigrationFailed)
	})
}

// failCase is one VM under a failure test, with its client.
type failCase struct {
	f     *labFixture
	name  string
	vm    api.VM
	poll  *Poller
	stall time.Duration // if set, the longest request the client may see
}

// startCase creates a VM on host1 with its disk on pool (and extra
// vm create flags) and starts its client.
func (f *labFixture) startCase(t *testing.T, name, pool string, extra ...string) *failCase {
	t.Helper()
	v := f.createServing(name, append([]string{"--pool", pool, "--host", "host1"}, extra...)...)
	p, err := StartPoller(f.ctx, "client", v.IP, 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop() })
	return &failCase{f: f, name: name, vm: v, poll: p}
}

// end checks the outcome of a case: the VM runs on exactly one host
// (owner, if not ""), serves with the same boot and no request lost, its
// last migration ended with result (if not ""), and nothing of it is
// left elsewhere. Then it deletes the VM.
func (c *failCase) end(t *testing.T, owner, result string) {
	t.Helper()
	f := c.f
	f.waitFor("the VM to run", 30*time.Second, func() bool { return f.vm(c.name).State == api.StateRunning })
	v := f.vm(c.name)
	if owner != "" && v.Host != owner {
		t.Errorf("the VM runs on %s, want %s", v.Host, owner)
	}
	if result != "" && (len(v.Migrations) == 0 || v.Migrations[0].Result != result) {
		t.Errorf("last migration: %+v, want result %s", v.Migrations, result)
	} else if len(v.Migrations) > 0 {
		t.Logf("migration: %s (%s)", v.Migrations[0].Result, v.Migrations[0].Error)
	}
	f.requireClean(v.ID, v.Host)
	if result != "" {
		f.requireEvent(t, c.name, "migration."+result)
	}
	time.Sleep(time.Second) // a few answers from where it runs now
	r := c.poll.Stop()
	t.Logf("client: %s", r)
	if c.stall > 0 && r.MaxLatency > c.stall {
		t.Errorf("the client waited %s for a request, want at most %s", r.MaxLatency, c.stall)
	}
	if r.Failed > 0 {
		t.Errorf("%d of %d requests failed: %v", r.Failed, r.Requests, r.Errors)
	}
	if len(r.Boots) != 1 || r.CountJumps > 0 || r.DiskJumps > 0 {
		t.Errorf("the VM did not go on as it was: boots %v, count jumps %d, disk jumps %d", r.Boots, r.CountJumps, r.DiskJumps)
	}
	f.shoal("vm", "delete", c.name, "--force")
	f.requireClean(v.ID, "")
}

// migrateToCrash migrates c's VM to host2, whose agent is killed at
// crash point: the migration must fail with an error that says want,
// the guest serve again on host1 before host2's agent is back (that
// agent would discard its copy), and then host2's agent is restarted
// without the crash point.
func (f *labFixture) migrateToCrash(t *testing.T, c *failCase, point, want string) {
	t.Helper()
	os.Setenv(crashpoint.Env, point)
	err := errors.Join(Kill(f.ctx, f.log, f.dir, "host2"), Revive(f.ctx, f.log, f.dir, "host2"))
	os.Unsetenv(crashpoint.Env)
	if err != nil {
		t.Fatal(err)
	}
	f.waitHostUp(t, "host2")
	if out, err := f.try("vm", "migrate", c.name, "--to", "host2"); err == nil {
		t.Fatalf("the migration succeeded with the target's agent killed at %s: %s", point, out)
	}
	f.waitMigrationEnd(t, c.name)
	last := c.poll.Result().LastCount
	f.waitFor("the guest to serve again on host1", 30*time.Second, func() bool {
		return c.poll.Result().LastCount > last+1
	})
	if err := Heal(f.ctx, f.log, f.dir, "host2"); err != nil {
		t.Fatal(err)
	}
	f.waitHostUp(t, "host2")
	if h := f.vm(c.name).Migrations; len(h) == 0 || !strings.Contains(h[0].Error, want) {
		t.Errorf("last migration %+v: want its error to say %q", h, want)
	}
}

// midMigration starts a migration of name to host at bandwidth and
// returns once memory is on its way.
func (f *labFixture) midMigration(t *testing.T, name, to, bandwidth string) {
	t.Helper()
	f.shoal("vm", "migrate", name, "--to", to, "--bandwidth", bandwidth, "--no-wait")
	f.waitFor("memory to be on its way", 60*time.Second, func() bool {
		m := f.vm(name).Migration
		return m != nil && m.Progress != nil && m.Progress.Phase == "memory" && m.Progress.Moved > 2<<20
	})
}

// waitMigrationEnd waits until the VM has no migration in flight.
func (f *labFixture) waitMigrationEnd(t *testing.T, name string) {
	t.Helper()
	f.waitFor("the migration to end", 90*time.Second, func() bool {
		v := f.vm(name)
		return v.Migration == nil && v.State != api.StateMigrating
	})
}

// waitHostUp waits until host list shows host up.
func (f *labFixture) waitHostUp(t testing.TB, host string) {
	t.Helper()
	f.waitFor(host+" to be up", 30*time.Second, func() bool {
		h, err := f.try("host", "show", host, "-o", "json")
		return err == nil && strings.Contains(h, `"state": "up"`)
	})
}

// requireEvent checks that shoal events lists an event of kind for vm
// (any VM if "").
func (f *labFixture) requireEvent(t *testing.T, vm, kind string) {
	t.Helper()
	args := []string{"events", "-o", "json"}
	if vm != "" {
		args = append(args, "--vm", vm)
	}
	var evs []api.Event
	if err := json.Unmarshal([]byte(f.shoal(args...)), &evs); err != nil {
		t.Fatal(err)
	}
	for _, e := range evs {
		if e.Kind == kind {
			t.Logf("event: %s %s: %s", e.Kind, e.Severity, e.Message)
			return
		}
	}
	t.Errorf("no %s event for vm %s in %+v", kind, vm, evs)
}
