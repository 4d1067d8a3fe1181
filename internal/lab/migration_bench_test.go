package lab

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/qemu"
)

// dirtyScript is the memory-dirtying workload: user-data that copies a
// 16 MiB file of non-zero bytes over another in a RAM file system without
// end. Under TCG that dirties about as much memory per second as the
// migration stream carries, so pre-copy alone never converges. (Zeros
// would not do: QEMU sends a zero page as a marker.) After the first
// pass it publishes /dirty on the guest's web server, so that a test can
// wait until the workload really runs.
const dirtyScript = `#!/bin/sh
yes 0123456789abcdef | head -c 16777216 > /dev/shm/src
dd if=/dev/shm/src of=/dev/shm/dirty bs=1M 2>/dev/null
echo dirtying > /www/dirty
while :; do dd if=/dev/shm/src of=/dev/shm/dirty bs=1M conv=notrunc 2>/dev/null; done
`

// waitDirtying waits until the guest at ip runs dirtyScript's loop.
func (f *labFixture) waitDirtying(ip string) {
	f.t.Helper()
	f.waitFor("the guest's workload to run", 90*time.Second, func() bool {
		var out strings.Builder
		code, err := Exec(f.ctx, f.dir, "client", []string{"wget", "-T", "2", "-qO-", "http://" + ip + "/dirty"}, Stdio{Out: &out})
		return err == nil && code == 0 && strings.HasPrefix(out.String(), "dirtying")
	})
}

// Modes of plain QEMU beside its defaults: without the default bandwidth
// cap of 128 MiB/s, as Shoal (and libvirt) migrate; and that, with QEMU's
// own TLS.
const (
	plainUncapped = "plain QEMU, no cap"
	plainTLS      = "plain QEMU, no cap, TLS"
	plainPause    = "plain QEMU, pause only" // 50 ms, not migrating
	// The client of the plain guest over the same span, nothing done to
	// the guest: the longest request it sees anyway.
	plainNothing = "plain QEMU, left alone"
	// Shoal with QEMU's default convergence policy (a 300 ms downtime
	// limit, no auto-converge) instead of its own (50 ms, auto-converge).
	shoalQEMUPolicy = "shoal, QEMU's 300ms policy"
)

// benchRounds is how many migrations of each kind the benchmark makes;
// SHOAL_BENCH_ROUNDS sets another number, for a quick look.
var benchRounds = envInt("SHOAL_BENCH_ROUNDS", 6)

// migSample is one measured migration. Wall runs from the request to
// the guest running on the target (for Shoal, the CLI's whole run); Total
// is what the migrator reports: Shoal's controller from the request to
// the recorded end, QEMU's own total-time for plain QEMU (its stream
// alone, without launching the target).
type migSample struct {
	Wall, Total, Downtime, Stall, Median time.Duration
	// Switch is the part of Shoal's downtime on the target, from the
	// stream's end there to the guest running (commit included).
	Switch time.Duration
	Failed int
	Err    string
	From   string // the host it left
}

// BenchmarkMigration measures live migration in a lab of two hosts,
// against a plain QEMU migration of the same guest between the same two
// hosts in the same run. For an idle guest and for one that dirties its
// memory without end, it alternates: Shoal (TLS, the default), Shoal
// --insecure, and plain QEMU (QMP 'migrate' with QEMU's defaults; its
// target starts the guest by itself). Each migration is watched by a
// client polling the guest every 10 ms; its longest request is the
// client's stall. Disks are on the shared pool for all. The idle guest
// is also paused for 50 ms where it runs (stop, cont), without migrating:
// the stall that the pause alone costs the client, the floor of any
// migration's.
//
// Rerun (as root): go test -run '^$' -bench Migration -benchtime 1x -timeout 60m ./internal/lab/
func BenchmarkMigration(b *testing.B) {
	f := startLab(b, 2)
	userData := filepath.Join(b.TempDir(), "dirty.sh")
	if err := os.WriteFile(userData, []byte(dirtyScript), 0o644); err != nil {
		b.Fatal(err)
	}
	type mode struct {
		name string
		args []string // for shoal vm migrate; nil = plain QEMU
	}
	for _, wl := range []struct {
		name  string
		extra []string
		data  []byte
		modes []mode
	}{
		{"idle", nil, nil, []mode{{"shoal", []string{}}, {"shoal --insecure", []string{"--insecure"}}, {"plain QEMU", nil}, {plainUncapped, nil}, {plainTLS, nil}, {plainPause, nil}, {plainNothing, nil}}},
		{"dirty", []string{"--user-data", userData}, []byte(dirtyScript), []mode{
			{"shoal", []string{}}, {"shoal --insecure", []string{"--insecure"}},
			{shoalQEMUPolicy, []string{"--downtime", "300ms", "--auto-converge=false"}},
			{"shoal --postcopy-after 3s", []string{"--postcopy-after", "3s"}}, {"plain QEMU", nil}, {plainUncapped, nil}}},
	} {
		if only := os.Getenv("SHOAL_BENCH_WORKLOAD"); only != "" && only != wl.name {
			continue
		}
		name := "b-" + wl.name
		v := f.createServing(name, append([]string{"--pool", "shared", "--host", "host1"}, wl.extra...)...)
		raw := f.newRawVM(b, "10.57.0.240", v.CPUModel, int(v.MemoryMiB), wl.data)
		if wl.data != nil {
			f.waitDirtying(v.IP)
			f.waitDirtying(raw.ip)
		}
		samples := map[string][]migSample{}
		for round := 0; round < benchRounds; round++ {
			// Every other round runs the modes backwards, so that each
			// mode migrates as often from host1 as from host2 (with two
			// Shoal modes, one would otherwise always go one way).
			order := slices.Clone(wl.modes)
			if round%2 == 1 {
				slices.Reverse(order)
			}
			for _, m := range order {
				var s migSample
				if m.args == nil {
					// Each guest is measured alone: the other one is paused,
					// so that its vCPU (a whole core, when it dirties memory)
					// does not weigh on this one's migration.
					f.shoal("vm", "pause", name)
					s = f.measure(raw.ip, func() (migSample, error) {
						switch m.name {
						case plainPause:
							return raw.pause(context.Background(), 50*time.Millisecond)
						case plainNothing:
							time.Sleep(time.Second) // about a migration's time
							return migSample{From: raw.host}, nil
						}
						var o qemu.MigrateOptions
						if m.name != "plain QEMU" {
							o.BandwidthBytes = qemu.UnlimitedBandwidth
						}
						from := raw.host
						r, err := raw.migrate(context.Background(), 90*time.Second, o, m.name == plainTLS)
						return migSample{Wall: r.Wall, Total: r.Total, Downtime: r.Downtime, From: from}, err
					})
					f.shoal("vm", "resume", name)
				} else {
					if err := raw.proc.Pause(f.ctx); err != nil {
						b.Fatal(err)
					}
					s = f.measure(v.IP, func() (migSample, error) {
						return f.shoalMigrate(name, m.args)
					})
					if err := raw.proc.Resume(f.ctx); err != nil {
						b.Fatal(err)
					}
				}
				samples[m.name] = append(samples[m.name], s)
			}
		}
		f.report(b, wl.name, wl.modes[0].name, samples, func(yield func(string) bool) {
			for _, m := range wl.modes {
				if !yield(m.name) {
					return
				}
			}
		})
		raw.stop()
		f.shoal("vm", "delete", name, "--force")
	}
}

// shoalMigrate migrates vm to the other host with the CLI and reads the
// figures of its history.
func (f *labFixture) shoalMigrate(vm string, args []string) (migSample, error) {
	from := f.vm(vm).Host
	to := map[string]string{"host1": "host2", "host2": "host1"}[from]
	start := time.Now()
	if _, err := f.try(append([]string{"vm", "migrate", vm, "--to", to}, args...)...); err != nil {
		return migSample{}, err
	}
	wall := time.Since(start)
	h := f.vm(vm).Migrations
	if len(h) == 0 {
		return migSample{}, fmt.Errorf("no migration recorded")
	}
	return migSample{Wall: wall, Total: time.Duration(h[0].TotalMs) * time.Millisecond,
		Downtime: time.Duration(h[0].DowntimeMs) * time.Millisecond, Switch: time.Duration(h[0].SwitchMs) * time.Millisecond,
		From: from}, nil
}

// measure runs one migration with a client polling ip, and adds what the
// client saw: its longest request and how many failed.
func (f *labFixture) measure(ip string, run func() (migSample, error)) migSample {
	p, err := StartPoller(f.ctx, "client", ip, 10*time.Millisecond)
	if err != nil {
		f.t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	s, err := run()
	time.Sleep(time.Second)
	r := p.Stop()
	if err != nil {
		s.Err = err.Error()
	}
	s.Stall, s.Median, s.Failed = r.MaxLatency, r.Percentile(0.5), r.Failed
	return s
}

// report logs every sample and the medians, and reports the medians of
// the first mode (Shoal's default) and their ratios to plain QEMU.
func (f *labFixture) report(b *testing.B, workload, main string, samples map[string][]migSample, modes func(func(string) bool)) {
	var lines []string
	lines = append(lines, fmt.Sprintf("%s guest, %d rounds (medians; all samples below):", workload, benchRounds))
	lines = append(lines, fmt.Sprintf("  %-26s %9s %9s %9s %9s %9s %s", "", "wall", "total", "downtime", "stall", "baseline", "failed requests / errors"))
	med := map[string]migSample{}
	for m := range modes {
		ss := samples[m]
		var ok []migSample
		failed, errs := 0, 0
		for _, s := range ss {
			failed += s.Failed
			if s.Err != "" {
				errs++
				continue
			}
			ok = append(ok, s)
		}
		md := medianSample(ok)
		med[m] = md
		lines = append(lines, fmt.Sprintf("  %-26s %9s %9s %9s %9s %9s %d / %d of %d", m, ms(md.Wall), ms(md.Total), ms(md.Downtime), ms(md.Stall), ms(md.Median), failed, errs, len(ss)))
	}
	for m := range modes {
		for i, s := range samples[m] {
			e := ""
			if s.Err != "" {
				e = " error: " + s.Err
			}
			from, sw := "", ""
			if s.From != "" {
				from = " from " + s.From
			}
			if s.Switch > 0 {
				sw = " (switch " + ms(s.Switch) + ")"
			}
			lines = append(lines, fmt.Sprintf("    %s #%d%s: wall %s total %s downtime %s%s stall %s (median request %s) failed %d%s",
				m, i+1, from, ms(s.Wall), ms(s.Total), ms(s.Downtime), sw, ms(s.Stall), ms(s.Median), s.Failed, e))
		}
	}
	if r := pairedRatios(samples[main], samples["plain QEMU"]); len(r) > 0 {
		lines = append(lines, fmt.Sprintf("  %s / plain QEMU, wall, round by round: median %.2fx, %.2fx to %.2fx", main, r[len(r)/2], r[0], r[len(r)-1]))
	}
	// Printed as well as logged: go test truncates a benchmark's long log.
	fmt.Println(strings.Join(lines, "\n"))
	b.Log(strings.Join(lines, "\n"))
	s, raw := med[main], med["plain QEMU"]
	b.ReportMetric(float64(s.Wall.Milliseconds()), workload+"-wall-ms")
	b.ReportMetric(float64(s.Downtime.Milliseconds()), workload+"-downtime-ms")
	b.ReportMetric(float64(s.Stall.Milliseconds()), workload+"-stall-ms")
	if raw.Wall > 0 {
		b.ReportMetric(float64(s.Wall)/float64(raw.Wall), workload+"-wall/plain")
	}
}

// pairedRatios are the wall times of a over those of b, round by round
// (the same index), sorted: the machine's load drifts, and two modes of
// one round ran seconds apart.
func pairedRatios(a, b []migSample) []float64 {
	var r []float64
	for i := range min(len(a), len(b)) {
		if a[i].Err == "" && b[i].Err == "" && b[i].Wall > 0 {
			r = append(r, float64(a[i].Wall)/float64(b[i].Wall))
		}
	}
	slices.Sort(r)
	return r
}

// medianSample is the sample of median value in each field.
func medianSample(ss []migSample) migSample {
	if len(ss) == 0 {
		return migSample{}
	}
	pick := func(get func(migSample) time.Duration) time.Duration {
		v := make([]time.Duration, len(ss))
		for i, s := range ss {
			v[i] = get(s)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	return migSample{
		Wall:     pick(func(s migSample) time.Duration { return s.Wall }),
		Total:    pick(func(s migSample) time.Duration { return s.Total }),
		Downtime: pick(func(s migSample) time.Duration { return s.Downtime }),
		Stall:    pick(func(s migSample) time.Duration { return s.Stall }),
		Median:   pick(func(s migSample) time.Duration { return s.Median }),
	}
}

func ms(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return fmt.Sprintf("%dms", d.Milliseconds())
}
