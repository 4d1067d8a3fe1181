package bench

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoalvm/shoal/internal/agentapi"
	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/cpumodel"
)

// Simulated hosts have no QEMU and no agent: they exist only as host
// records and liveness leases, which they renew through the same
// agentapi.Local an agent inside the server uses. They are named
// sim-00001, sim-00002, ... so that nobody takes them for real ones.
const (
	simCPUs      = 64
	simMemoryMiB = 256 << 10 // 256 GiB
	simAccel     = "simulated"
)

// SimHostName is the name of the i-th simulated host (from 1).
func SimHostName(i int) string { return fmt.Sprintf("sim-%05d", i) }

func simHost(i int) api.Host {
	name := SimHostName(i)
	return api.Host{Name: name, ID: "simulated-" + name, State: api.HostUp, CPUModel: "simulated host (no QEMU)",
		CPUFlags: cpumodel.TCGFlags(), CPUs: simCPUs, MemoryMiB: simMemoryMiB, Accel: simAccel,
		AccelReason: "simulated host for control-plane scale tests", Pools: []string{"local"},
		LastHeartbeat: time.Now().UTC()}
}

// leaseTTL is the liveness lease of a host heartbeating every hb, as the
// agent chooses it.
func leaseTTL(hb time.Duration) time.Duration { return max(3*hb, 3*time.Second) }

// registerHosts registers hosts 1..n with workers calls in flight.
func registerHosts(ctx context.Context, cp agentapi.Reporter, n, workers int, hb time.Duration) error {
	var next atomic.Int64
	errc := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1))
				if i > n || ctx.Err() != nil {
					return
				}
				if err := cp.Register(ctx, simHost(i), leaseTTL(hb)); err != nil {
					errc <- fmt.Errorf("register simulated host %s: %w", SimHostName(i), err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	return <-errc
}

// heartbeats renews the liveness of hosts 1..n, each every interval, at
// evenly spread moments, until stop is called.
type heartbeats struct {
	cp       agentapi.Reporter
	log      *slog.Logger
	n        int
	interval time.Duration

	mu      sync.Mutex
	lat     []time.Duration // of every heartbeat since the last reset
	errs    int
	late    int // sent more than one interval after it was due
	since   time.Time
	lastErr error
}

// heartbeatWorkers is how many heartbeats may be in flight at once.
const heartbeatWorkers = 32

// run beats until ctx ends.
func (h *heartbeats) run(ctx context.Context) {
	h.reset()
	work := make(chan int, heartbeatWorkers)
	var wg sync.WaitGroup
	for range heartbeatWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				t0 := time.Now()
				err := h.cp.Register(ctx, simHost(i), leaseTTL(h.interval))
				h.record(time.Since(t0), err, ctx.Err() != nil)
			}
		}()
	}
	defer wg.Wait()
	defer close(work)
	start := time.Now()
	step := h.interval / time.Duration(h.n)
	for k := 0; ; k++ {
		due := start.Add(time.Duration(k) * step)
		if d := time.Until(due); d > time.Millisecond {
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
		if time.Since(due) > h.interval {
			h.mu.Lock()
			h.late++
			h.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case work <- k%h.n + 1:
		}
	}
}

func (h *heartbeats) record(d time.Duration, err error, stopping bool) {
	if stopping {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lat = append(h.lat, d)
	if err != nil {
		h.errs++
		h.lastErr = err
	}
}

// reset starts a new measurement period.
func (h *heartbeats) reset() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lat, h.errs, h.late, h.lastErr, h.since = nil, 0, 0, nil, time.Now()
}

// HeartbeatStats is the heartbeat load of a period.
type HeartbeatStats struct {
	Interval  time.Duration `json:"interval_ns"`
	Count     int           `json:"count"`
	PerSecond float64       `json:"per_second"`
	P50       time.Duration `json:"p50_ns"`
	P99       time.Duration `json:"p99_ns"`
	Errors    int           `json:"errors"`
	Late      int           `json:"late"` // sent more than one interval after due
	LastError string        `json:"last_error,omitempty"`
}

func (h *heartbeats) stats() HeartbeatStats {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := HeartbeatStats{Interval: h.interval, Count: len(h.lat), Errors: h.errs, Late: h.late}
	if el := time.Since(h.since); el > 0 {
		s.PerSecond = float64(len(h.lat)) / el.Seconds()
	}
	s.P50, s.P99 = percentile(h.lat, 50), percentile(h.lat, 99)
	if h.lastErr != nil {
		s.LastError = h.lastErr.Error()
	}
	return s
}
