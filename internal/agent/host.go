package agent

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/cpumodel"
	"github.com/shoalvm/shoal/internal/fencewd"
)

func (w *worker) now() time.Time { return time.Now().UTC() }

// ErrHostClaimed means another machine uses this host name.
var ErrHostClaimed = errors.New("host name claimed by another machine")

// HostInfo describes this machine as a Shoal host.
func (a *Agent) HostInfo(ctx context.Context) api.Host {
	a.infoOnce.Do(func() {
		a.info = api.Host{
			Name: a.cfg.Host, ID: a.id, State: api.HostUp, CPUs: runtime.NumCPU(),
			CPUModel: cpuInfo("model name"), CPUFlags: strings.Fields(cpuInfo("flags")),
			MemoryMiB: memTotalMiB(), Address: a.cfg.Address, Role: a.cfg.Role, Portal: a.cfg.Portal,
		}
		for _, p := range a.cfg.Pools {
			a.info.Pools = append(a.info.Pools, p.Name)
		}
		if out, err := exec.CommandContext(ctx, a.cfg.QEMU, "--version").Output(); err == nil {
			a.info.QEMUVersion = strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
		}
	})
	h := a.info
	h.Accel, h.AccelReason = a.cfg.Accel, a.cfg.AccelReason
	for _, ps := range a.netPoolSpaces() { // a VM's first disk may be in one of them
		h.Pools = append(slices.Clip(h.Pools), ps.Name)
	}
	h.Storage = a.poolSpaces(ctx)
	if h.Accel != "kvm" {
		h.CPUFlags = cpumodel.TCGFlags() // what software emulation offers
	}
	return h
}

// Register records this host in the store (Run does it too); call it
// before serving so that the host can take VMs at once.
func (a *Agent) Register(ctx context.Context) error { return a.register(ctx) }

func (a *Agent) register(ctx context.Context) error {
	if err := a.loadIdentity(); err != nil {
		return err
	}
	h := a.HostInfo(ctx)
	h.LastHeartbeat = time.Now().UTC()
	if err := a.cp.Register(ctx, h, a.cfg.LeaseTTL); err != nil {
		return fmt.Errorf("register host %s: %w", h.Name, err)
	}
	a.log.Debug("host registered", "cpus", h.CPUs, "memory_mib", h.MemoryMiB, "accel", h.Accel)
	return nil
}

// heartbeat refreshes the host record so the server can tell it is alive.
func (a *Agent) heartbeat(ctx context.Context) {
	t := time.NewTicker(a.cfg.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			sent, mono := time.Now(), fencewd.Now()
			if err := a.register(ctx); err != nil {
				if ctx.Err() == nil {
					a.log.Warn("heartbeat", "err", err)
				}
				continue
			}
			a.renewed(sent, mono)
		}
	}
}

// identity is kept in the agent's state dir: it ties the dir to one host
// name, so a renamed machine or a wrong --host cannot adopt (or destroy)
// VMs that are not its own.
type identity struct {
	Host string `json:"host"`
	ID   string `json:"id"`
}

func (a *Agent) loadIdentity() error {
	if a.id != "" {
		return nil
	}
	p := filepath.Join(a.cfg.Dir, "identity.json")
	var id identity
	b, err := os.ReadFile(p)
	switch {
	case err == nil:
		if err := json.Unmarshal(b, &id); err != nil {
			return fmt.Errorf("read %s: %w", p, err)
		}
		if id.Host != a.cfg.Host {
			return fmt.Errorf("%w: the state in %s belongs to host %q, not %q: start with --host %s",
				ErrHostClaimed, a.cfg.Dir, id.Host, a.cfg.Host, id.Host)
		}
	case os.IsNotExist(err):
		raw := make([]byte, 8)
		_, _ = rand.Read(raw)
		id = identity{Host: a.cfg.Host, ID: hex.EncodeToString(raw)}
		b, _ := json.Marshal(id)
		if err := os.MkdirAll(a.cfg.Dir, 0o750); err != nil {
			return fmt.Errorf("agent state dir: %w", err)
		}
		if err := writeAtomic(p, b); err != nil {
			return err
		}
	default:
		return fmt.Errorf("read %s: %w", p, err)
	}
	a.id = id.ID
	return nil
}

// cpuInfo returns a field of the first CPU in /proc/cpuinfo.
func cpuInfo(field string) string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == field {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func memTotalMiB() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "MemTotal:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb / 1024
		}
	}
	return 0
}

// SetAccel sets the accelerator new VMs use (before Run).
func (a *Agent) SetAccel(accel, reason string) { a.cfg.Accel, a.cfg.AccelReason = accel, reason }
