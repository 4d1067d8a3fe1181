package agent

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/shoalvm/shoal/internal/api"
)

func (w *worker) now() time.Time { return time.Now().UTC() }

// HostInfo describes this machine as a Shoal host.
func (a *Agent) HostInfo() api.Host {
	h := api.Host{
		Name: a.cfg.Host, State: api.HostUp, CPUs: runtime.NumCPU(),
		Accel: a.cfg.Accel, AccelReason: a.cfg.AccelReason,
		CPUModel: cpuModel(), MemoryMiB: memTotalMiB(),
	}
	if out, err := exec.Command(a.cfg.QEMU, "--version").Output(); err == nil {
		h.QEMUVersion = strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	}
	return h
}

// Register records this host in the store (Run does it too); call it
// before serving so that the host can take VMs at once.
func (a *Agent) Register(ctx context.Context) error { return a.register(ctx) }

func (a *Agent) register(ctx context.Context) error {
	h := a.HostInfo()
	h.LastHeartbeat = time.Now().UTC()
	if err := a.st.PutHost(ctx, h); err != nil {
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
			if err := a.register(ctx); err != nil && ctx.Err() == nil {
				a.log.Warn("heartbeat", "err", err)
			}
		}
	}
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
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
