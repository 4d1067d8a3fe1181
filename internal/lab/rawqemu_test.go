package lab

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/cloudinit"
	"github.com/shoalvm/shoal/internal/image"
	"github.com/shoalvm/shoal/internal/qemu"
	"github.com/shoalvm/shoal/internal/storage"
)

// rawVM is the baseline of the migration benchmark: the tiny guest run
// by qemu-system-x86_64 directly in the lab's hosts, with the argv
// Shoal's agents use (qemu.Args), its disk on the lab's shared pool, a
// tap of its own on each host's bridge, and migrated by plain QMP with
// QEMU's defaults, as an administrator would by hand. No Shoal process
// takes part.
type rawVM struct {
	f        *labFixture
	t        testing.TB
	ip, mac  string
	tap      string
	cfg      qemu.Config // without Dir and Incoming
	host     string      // where it runs
	dirs     map[string]string
	proc     *qemu.Process
	log      *slog.Logger
	userData []byte
}

// newRawVM starts the baseline VM on host1, like the Shoal VM of the same
// run (CPU model, memory, image), answering on ip.
func (f *labFixture) newRawVM(t testing.TB, ip, cpuModel string, memMiB int, userData []byte) *rawVM {
	t.Helper()
	ctx := context.Background()
	l := f.layout()
	tiny := filepath.Join(l.Ctl(), "images", "tiny") // the server's image library
	dir := filepath.Join(l.Shared(), "raw")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(dir, "disk.qcow2")
	_ = os.Remove(disk) // of an earlier workload of the same run
	if err := storage.CreateOverlay(ctx, filepath.Join(tiny, image.TinyDiskFile), disk, 64<<20); err != nil {
		t.Fatal(err)
	}
	r := &rawVM{f: f, t: t, ip: ip, mac: "52:54:00:00:00:f0", tap: "rawmig", log: f.log, userData: userData,
		dirs: map[string]string{"host1": filepath.Join(l.Host(1), "raw"), "host2": filepath.Join(l.Host(2), "raw")}}
	seed := filepath.Join(dir, "seed.iso")
	if err := cloudinit.WriteSeed(ctx, seed, cloudinit.Seed{InstanceID: "raw", Hostname: "raw", MAC: r.mac,
		Address: ip + "/24", Gateway: "10.57.0.1", UserData: userData}); err != nil {
		t.Fatal(err)
	}
	r.cfg = qemu.Config{Name: "raw", Accel: "tcg", CPUs: 1, CPUModel: cpuModel, MemoryMiB: memMiB,
		Kernel: filepath.Join(tiny, image.TinyKernelFile), Initrd: filepath.Join(tiny, image.TinyInitrdFile), Cmdline: image.TinyCmdline,
		Disks: []qemu.Disk{{Path: disk, Format: "qcow2", Serial: "disk0"}, {Path: seed, Format: "raw", ReadOnly: true, Serial: "cidata"}}}
	for _, h := range []string{"host1", "host2"} {
		f.inHost(t, h, "ip", "tuntap", "add", "dev", r.tap, "mode", "tap", "vnet_hdr")
		f.inHost(t, h, "ip", "link", "set", r.tap, "master", "shoal0", "up")
	}
	t.Cleanup(r.stop)
	r.proc = r.launch(ctx, "host1", false)
	r.host = "host1"
	f.waitServing(ip, 2*time.Minute)
	return r
}

// inHost runs a command in a lab host's namespace.
func (f *labFixture) inHost(t testing.TB, host string, argv ...string) {
	t.Helper()
	var out strings.Builder
	code, err := Exec(f.ctx, f.dir, host, argv, Stdio{Out: &out, Err: &out})
	if err != nil || code != 0 {
		t.Fatalf("%s: %v: exit %d: %s", strings.Join(argv, " "), err, code, out.String())
	}
}

// launch starts QEMU for the VM on host (as a waiting target if
// incoming) and returns it attached over QMP.
func (r *rawVM) launch(ctx context.Context, host string, incoming bool) *qemu.Process {
	r.t.Helper()
	dir := r.dirs[host]
	_ = os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		r.t.Fatal(err)
	}
	cfg := r.cfg
	cfg.Dir, cfg.Incoming = dir, incoming
	args, err := qemu.Args(cfg)
	if err != nil {
		r.t.Fatal(err)
	}
	args = append(args, "-netdev", "tap,id=net0,ifname="+r.tap+",script=no,downscript=no,vnet_hdr=on",
		"-device", "virtio-net-pci,netdev=net0,mac="+r.mac)
	r.f.inHost(r.t, host, append([]string{"qemu-system-x86_64"}, args...)...)
	p, err := qemu.Attach(ctx, r.log, dir)
	if err != nil {
		r.t.Fatal(err)
	}
	return p
}

// rawMigration is what one plain QEMU migration took.
type rawMigration struct {
	Wall     time.Duration // from launching the target QEMU to the VM running there
	Total    time.Duration // QEMU's total-time of the stream
	Downtime time.Duration // the guest's pause: source's STOP to target's RESUME (QEMU's downtime if longer, or without them)
	Bytes    int64
}

// migrate moves the VM to the other host the plain way: a target QEMU
// waiting on TCP, 'migrate' on the source with QEMU's default settings
// but for those of o, the target starting the guest by itself once the
// stream is in. With tls, the QEMUs encrypt the stream themselves
// (tls-creds-x509 with each lab host's agent certificate).
func (r *rawVM) migrate(ctx context.Context, timeout time.Duration, o qemu.MigrateOptions, tls bool) (rawMigration, error) {
	to := map[string]string{"host1": "host2", "host2": "host1"}[r.host]
	k, _ := HostIndex(to)
	start := time.Now()
	target := r.launch(ctx, to, true)
	var in qemu.IncomingOptions
	if tls {
		if err := r.addTLS(ctx, r.proc, r.host, false); err != nil {
			target.Kill()
			return rawMigration{}, err
		}
		if err := r.addTLS(ctx, target, to, true); err != nil {
			target.Kill()
			return rawMigration{}, err
		}
		in.TLSCreds, o.TLSCreds = "tls-in", "tls-out"
	}
	uri, err := target.PrepareIncoming(ctx, "tcp:"+mustAddr(HostName(k)).String()+":0", in)
	if err != nil {
		target.Kill()
		return rawMigration{}, err
	}
	began := time.Now()
	if err := r.proc.Migrate(ctx, uri, o); err != nil {
		target.Kill()
		return rawMigration{}, err
	}
	// The guest's pause, as Shoal measures it: from the source's STOP
	// event to the target's RESUME.
	var stopped, resumed time.Time
	events := func() {
		for {
			select {
			case ev := <-r.proc.QMP().Events():
				if ev.Name == "STOP" && ev.Timestamp.After(began) && stopped.IsZero() {
					stopped = ev.Timestamp
				}
			case ev := <-target.QMP().Events():
				if ev.Name == "RESUME" && resumed.IsZero() {
					resumed = ev.Timestamp
				}
			default:
				return
			}
		}
	}
	deadline := time.Now().Add(timeout)
	for {
		events()
		q, err := r.proc.QueryMigrate(ctx)
		if err != nil {
			return rawMigration{}, err
		}
		if q.Status == "completed" && q.TotalTime > 0 {
			// The target runs the guest by itself once the stream is in.
			for {
				st, err := target.Status(ctx)
				if err != nil {
					return rawMigration{}, err
				}
				if st == "running" {
					break
				}
				time.Sleep(time.Millisecond)
			}
			m := rawMigration{Wall: time.Since(start), Total: q.TotalTime, Downtime: q.Downtime, Bytes: q.TransferredBytes}
			for wait := time.Now().Add(time.Second); resumed.IsZero() && time.Now().Before(wait); time.Sleep(time.Millisecond) {
				events()
			}
			if !stopped.IsZero() && resumed.Sub(stopped) > m.Downtime {
				m.Downtime = resumed.Sub(stopped)
			}
			old := r.proc
			r.proc, r.host = target, to
			_ = old.Kill()
			<-old.Exited()
			old.Close()
			return m, nil
		}
		if q.Done() && q.Status != "completed" {
			target.Kill()
			return rawMigration{}, fmt.Errorf("plain migration %s: %s", q.Status, q.Error)
		}
		if time.Now().After(deadline) {
			_ = r.proc.CancelMigration(ctx)
			target.Kill()
			return rawMigration{}, fmt.Errorf("plain migration did not converge within %s (%d bytes sent, %d left)", timeout, q.TransferredBytes, q.RemainingBytes)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// pause stops the guest for d and runs it again where it is: the client's
// stall from a pause alone, without a migration.
func (r *rawVM) pause(ctx context.Context, d time.Duration) (migSample, error) {
	start := time.Now()
	if err := r.proc.Pause(ctx); err != nil {
		return migSample{}, err
	}
	time.Sleep(d)
	if err := r.proc.Resume(ctx); err != nil {
		return migSample{}, err
	}
	return migSample{Wall: time.Since(start), Total: time.Since(start), Downtime: time.Since(start)}, nil
}

// addTLS gives p the TLS credentials of host's agent, as the migration's
// target (server) or source.
func (r *rawVM) addTLS(ctx context.Context, p *qemu.Process, host string, server bool) error {
	k, _ := HostIndex(host)
	pki := filepath.Join(r.f.layout().Host(k), "pki")
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(pki, name))
		if err != nil {
			r.t.Fatal(err)
		}
		return b
	}
	dir := filepath.Join(r.dirs[host], "tls")
	if err := qemu.WriteTLSDir(dir, read("ca.crt"), read("agent.crt"), read("agent.key")); err != nil {
		return err
	}
	id := "tls-out"
	if server {
		id = "tls-in"
	}
	return p.AddTLSCreds(ctx, id, dir, server)
}

// stop ends the VM and removes its taps.
func (r *rawVM) stop() {
	if r.proc != nil {
		_ = r.proc.Kill()
		<-r.proc.Exited()
		r.proc.Close()
	}
	for _, h := range []string{"host1", "host2"} {
		_, _ = Exec(context.Background(), r.f.dir, h, []string{"ip", "link", "del", r.tap}, Stdio{})
	}
}
