package agent

import (
	"context"
	"sync"
	"time"

	"github.com/shoalvm/shoal/internal/qemu"
)

// fenceTick is how often the watchdog looks at the lease.
const fenceTick = 100 * time.Millisecond

// fence is the agent's watchdog. A host that could not renew its liveness
// lease for FenceTimeout kills its HA VMs itself, because from then on
// the control plane may restart them on another host (internal/ha has
// the timing argument). It measures on the monotonic clock, from the
// moment the last renewal that succeeded was sent.
//
// After fencing, the host starts none of its HA VMs again until it has
// renewed its lease and then read a fresh snapshot of its VMs: a VM given
// to another host meanwhile is then no longer in it, and the control
// plane gives a VM away only while the host's lease is gone.
type fence struct {
	mu      sync.Mutex
	timeout time.Duration
	renewed time.Time // when the last renewal that succeeded was sent
	fenced  bool      // the HA VMs were killed
	since   time.Time
	liftGen int                // a snapshot of this stream or later lifts the fence (0 = not yet renewed)
	gen     int                // of the current VM stream
	cancel  context.CancelFunc // of the current VM stream
}

// renewedAt records a renewal that succeeded, sent at sent. After a
// fence it ends the current VM stream, so that the next one brings a
// snapshot read after the renewal.
func (f *fence) renewedAt(sent time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if sent.After(f.renewed) {
		f.renewed = sent
	}
	if f.fenced && f.liftGen == 0 {
		f.liftGen = f.gen + 1
		if f.cancel != nil {
			f.cancel()
		}
	}
}

// stream records a new VM stream; it returns its generation.
func (f *fence) stream(cancel context.CancelFunc) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gen++
	f.cancel = cancel
	return f.gen
}

// snapshot is called with each snapshot of stream gen, before it is
// handed out; it lifts the fence when the snapshot is recent enough.
func (f *fence) snapshot(gen int) (lifted bool, after time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.fenced || f.liftGen == 0 || gen < f.liftGen {
		return false, 0
	}
	f.fenced, f.liftGen = false, 0
	return true, time.Since(f.since)
}

// due reports whether the host must fence now (and notes that it did).
func (f *fence) due() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fenced || f.renewed.IsZero() || time.Since(f.renewed) < f.timeout {
		return false
	}
	f.fenced, f.since, f.liftGen = true, time.Now(), 0
	return true
}

// holds reports whether the fence is up.
func (f *fence) holds() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.fenced
}

// watchdog fences the host when its lease lapses.
func (a *Agent) watchdog(ctx context.Context) {
	t := time.NewTicker(fenceTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !a.fence.due() {
			continue
		}
		a.log.Error("could not renew this host's lease: killing its HA VMs, which the control plane may now restart elsewhere",
			"fence_timeout", a.fence.timeout)
		for id, name := range a.haVMs() {
			qemu.KillAll(a.log, a.vmDir(id))
			a.log.Warn("fenced HA vm", "vm", name, "vm_id", id)
		}
		a.mu.Lock()
		for _, w := range a.vms {
			w.poke()
		}
		a.mu.Unlock()
	}
}

// haVMs lists the HA VMs this host owns, by id.
func (a *Agent) haVMs() map[string]string {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[string]string{}
	for id, w := range a.vms {
		if s := w.latest(); s != nil && s.HA && s.Host == a.cfg.Host {
			out[id] = s.Name
		}
	}
	return out
}
