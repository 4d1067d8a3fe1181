// Package agent is the host side of Shoal: it converges the VMs that the
// store assigns to this host onto real QEMU processes, taps and disks, and
// reports what runs. VMs outlive the agent: on start it reattaches to the
// QEMU processes it finds in its state directory and removes whatever
// belongs to no VM any more.
package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/shoalvm/shoal/internal/agentapi"
	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/fencewd"
	"github.com/shoalvm/shoal/internal/storage"
)

// Config configures an agent.
type Config struct {
	Host        string // this host's name
	Dir         string // state dir: vms/<id>/ holds each VM's sockets, pidfile and seed
	ImageDir    string // image library: <name>/disk.qcow2 (+ vmlinuz, initrd.img)
	Pools       []storage.Pool
	QEMU        string        // qemu-system-x86_64 binary
	Accel       string        // "kvm" or "tcg"
	AccelReason string        // why TCG, when it is
	StopTimeout time.Duration // ACPI grace period before a stop is forced
	Address     string        // URL of this agent's own API, for the server (console, logs)
	BridgeAddr  string        // this host's address on the VM bridge (CIDR); "" = the network's gateway
	Uplink      string        // NIC to put into the VM bridge, joining it to the physical network
	Heartbeat   time.Duration // how often the host renews its liveness
	LeaseTTL    time.Duration // a host silent this long is down
	// FenceTimeout: a host that could not renew its lease for this long
	// kills its HA VMs (default LeaseTTL; see internal/ha).
	FenceTimeout time.Duration
	// Watchdog is the command line of the fence watchdog to keep running
	// beside the agent (internal/fencewd), so that the host's HA VMs die
	// even if the agent does; nil = none (the agent still fences while
	// it lives).
	Watchdog    []string
	MigrationIP string      // this host's address for migration streams ("" = it cannot be a target)
	PeerTLS     *tls.Config // this host's certificate, for host-to-host links (migration streams, frame relay); nil = none
	// QEMUTLSDir holds the same certificate for QEMU (qemu.WriteTLSDir):
	// a migration target's QEMU receives the stream with TLS itself.
	QEMUTLSDir string
	// Role and Portal go into the host record: a storage server's
	// (api.HostRoleStorage) runs no VM and serves iSCSI at Portal.
	Role, Portal string
	// Served, if set, are the pools this node serves through other
	// drivers than its directories (see served.go).
	Served Served
}

// Agent runs the VMs of one host.
type Agent struct {
	cfg Config
	cp  agentapi.ControlPlane
	log *slog.Logger
	mu  sync.Mutex
	vms map[string]*worker // by VM id
	wg  sync.WaitGroup

	imageLocks sync.Map // image name -> *sync.Mutex (see worker.ensureImage)

	fence fence // the watchdog's state

	volumes  volumeJobs // see volumes.go
	netPools netPools   // see netpools.go
	rbd      rbdPools   // see rbdpools.go

	id       string // this machine's identity (identity.json)
	infoOnce sync.Once
	info     api.Host // static facts about this machine
}

// imageLock is the lock of image name's copy on this host.
func (a *Agent) imageLock(name string) *sync.Mutex {
	m, _ := a.imageLocks.LoadOrStore(name, new(sync.Mutex))
	return m.(*sync.Mutex)
}

// New returns an agent; Run starts it.
func New(cfg Config, cp agentapi.ControlPlane, log *slog.Logger) *Agent {
	if cfg.StopTimeout == 0 {
		cfg.StopTimeout = 30 * time.Second
	}
	if cfg.Heartbeat == 0 {
		cfg.Heartbeat = time.Second
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = max(3*cfg.Heartbeat, 3*time.Second)
	}
	if cfg.FenceTimeout == 0 {
		cfg.FenceTimeout = cfg.LeaseTTL
	}
	if cfg.QEMU == "" {
		cfg.QEMU = "qemu-system-x86_64"
	}
	return &Agent{cfg: cfg, cp: cp, log: log.With("host", cfg.Host), vms: map[string]*worker{},
		fence: fence{timeout: cfg.FenceTimeout}}
}

func (a *Agent) vmDir(id string) string { return filepath.Join(a.cfg.Dir, "vms", id) }

// Run registers the host, reattaches to running VMs, and reconciles until
// ctx ends. VMs keep running after it returns.
func (a *Agent) Run(ctx context.Context) error {
	if err := os.MkdirAll(filepath.Join(a.cfg.Dir, "vms"), 0o750); err != nil {
		return fmt.Errorf("agent state dir: %w", err)
	}
	a.restrictDisks()
	for {
		sent, mono := time.Now(), fencewd.Now()
		err := a.register(ctx)
		if err == nil {
			a.renewed(sent, mono)
			break
		}
		if errors.Is(err, ErrHostClaimed) || errors.Is(err, api.ErrConflict) || ctx.Err() != nil {
			return err
		}
		a.log.Warn("cannot register the host yet; retrying", "err", err)
		sleep(ctx, time.Second)
	}
	a.wg.Add(1)
	go func() { defer a.wg.Done(); a.heartbeat(ctx) }()
	a.wg.Add(1)
	go func() { defer a.wg.Done(); a.watchdog(ctx) }()
	a.wg.Add(1)
	go func() { defer a.wg.Done(); a.capLogs(ctx) }()
	a.wg.Add(1)
	go func() { defer a.wg.Done(); a.watchNetPools(ctx) }()
	if err := a.startWatchdog(); err != nil {
		return err
	}
	defer a.wg.Wait()
	for ctx.Err() == nil {
		sctx, cancel := context.WithCancel(ctx)
		gen := a.fence.stream(cancel)
		err := a.cp.WatchVMs(sctx, a.cfg.Host, func(ev agentapi.Event) error {
			switch {
			case ev.Snapshot:
				if lifted, after := a.fence.snapshot(gen); lifted {
					a.log.Info("lease renewed and VMs read again: the fence is lifted", "fenced_for", after.Round(time.Millisecond))
				}
				a.resync(ctx, ev.Specs)
				a.servedVolumes(ctx, ev.Volumes, true)
				for _, v := range ev.Volumes {
					a.volumeEvent(ctx, v)
				}
			case ev.Volume != nil:
				a.volumeEvent(ctx, *ev.Volume)
			case ev.Spec != nil:
				a.deliver(ctx, ev.Spec.ID, ev.Spec)
			case ev.Gone != "":
				a.deliver(ctx, ev.Gone, nil)
			}
			return nil
		})
		cancel()
		if ctx.Err() == nil {
			a.log.Warn("lost the VM stream from the control plane; resyncing", "err", err)
			sleep(ctx, time.Second)
		}
	}
	return nil
}

// resync hands every VM of a fresh snapshot to its worker, and tells the
// workers of VMs that are no longer ours (or leftovers with no VM at all).
func (a *Agent) resync(ctx context.Context, specs []api.VMSpec) {
	mine := map[string]api.VMSpec{}
	for _, s := range specs {
		if s.OnHost(a.cfg.Host) {
			mine[s.ID] = s
		}
	}
	for id := range a.localIDs() {
		if _, ok := mine[id]; !ok {
			a.deliver(ctx, id, nil)
		}
	}
	for id, s := range mine {
		a.deliver(ctx, id, &s)
	}
	a.mu.Lock()
	for id, w := range a.vms {
		if _, ok := mine[id]; !ok {
			w.update(nil)
		}
	}
	a.mu.Unlock()
}

// localIDs lists the ids of VMs with a state dir or a disk in a local
// pool of this host. (Disks in shared pools belong to whichever host owns
// their VM.)
func (a *Agent) localIDs() map[string]bool {
	ids := map[string]bool{}
	ents, _ := os.ReadDir(filepath.Join(a.cfg.Dir, "vms"))
	for _, e := range ents {
		ids[e.Name()] = true
	}
	for _, p := range a.cfg.Pools {
		if p.Shared {
			continue
		}
		files, _ := os.ReadDir(p.Dir)
		for _, f := range files {
			if id, ok := storage.DiskOwner(f.Name()); ok {
				ids[id] = true
			}
		}
	}
	return ids
}

// deliver hands the latest spec (nil: not ours any more) to the VM's
// worker, starting one if needed.
func (a *Agent) deliver(ctx context.Context, id string, s *api.VMSpec) {
	a.mu.Lock()
	defer a.mu.Unlock()
	w, ok := a.vms[id]
	if !ok {
		if s == nil && !a.hasLocal(id) {
			return
		}
		w = newWorker(a, id)
		a.vms[id] = w
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			defer w.close()
			for {
				w.run(ctx)
				a.mu.Lock()
				// An update that arrived while the worker was finishing
				// must not be lost: run again for it.
				if ctx.Err() == nil && w.pending() {
					a.mu.Unlock()
					continue
				}
				delete(a.vms, id)
				a.mu.Unlock()
				return
			}
		}()
	}
	w.update(s)
}

func (a *Agent) hasLocal(id string) bool { return a.localIDs()[id] }

// DialConsole connects to the serial console of a VM running here.
func (a *Agent) DialConsole(ctx context.Context, id string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", filepath.Join(a.vmDir(id), "console.sock"))
	if err != nil {
		return nil, api.Errorf(api.ErrConflict, "console not available: is the VM running?")
	}
	return c, nil
}

// LogDir returns the directory holding a VM's serial console output
// (qemu.ConsoleLog and qemu.ConsoleLogOld).
func (a *Agent) LogDir(id string) string { return a.vmDir(id) }

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
