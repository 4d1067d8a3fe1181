// Package bench measures Shoal's control plane at scale with simulated
// hosts: hosts that exist only as records and liveness leases in etcd (no
// agent, no QEMU), named sim-NNNNN. Everything else is real: the server,
// its REST API, embedded etcd with its usual durability (fsync on every
// commit).
package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shoalvm/shoal/internal/agentapi"
	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/node"
	"github.com/shoalvm/shoal/internal/pki"
	"github.com/shoalvm/shoal/internal/store"
)

// SimNetwork is the network the benchmark's VMs get their addresses on:
// a /10 has room for four million.
const (
	SimNetwork = "sim-net"
	SimSubnet  = "10.64.0.0/10"
)

// SimProject is the project the benchmark's VMs are created in: its
// quotas are on (each create is checked against them, in its
// transaction) but high enough never to refuse one.
const SimProject = "sim-project"

// SimLimits are SimProject's quotas.
var SimLimits = api.Limits{VMs: 1 << 30, CPUs: 1 << 30, MemoryMiB: 1 << 40, DiskBytes: 1 << 60}

// PlacementOptions configures RunPlacement.
type PlacementOptions struct {
	Hosts       int           // simulated hosts
	VMs         int           // VMs to create
	Concurrency int           // API clients creating at once
	Heartbeat   time.Duration // each simulated host renews its liveness this often
	DataDir     string        // parent of the run's directory; "" = the system's temp dir
	CPUProfile  string        // write a CPU profile of the create phase here ("" = none)
	Progress    io.Writer     // progress lines (nil = none)
}

// PlacementResult is what RunPlacement measured.
type PlacementResult struct {
	Hosts        int            `json:"hosts"`
	RegisterTime time.Duration  `json:"register_ns"` // to register every simulated host
	VMs          int            `json:"vms"`         // asked for
	Concurrency  int            `json:"concurrency"`
	Created      int            `json:"created"` // 201 answers
	Refused      int            `json:"refused"` // any other answer
	FirstError   string         `json:"first_error,omitempty"`
	InEtcd       int64          `json:"in_etcd"`     // VM records in etcd afterwards
	ProjectVMs   int64          `json:"project_vms"` // VMs SimProject's usage record counts afterwards
	Elapsed      time.Duration  `json:"elapsed_ns"`
	PerSecond    float64        `json:"placements_per_second"` // Created / Elapsed
	P50          time.Duration  `json:"p50_ns"`
	P99          time.Duration  `json:"p99_ns"`
	Max          time.Duration  `json:"max_ns"`
	SpreadMin    int            `json:"spread_min"` // fewest VMs on a simulated host
	SpreadMax    int            `json:"spread_max"`
	HostsUp      int            `json:"hosts_up"` // simulated hosts up at the end
	HostListTime time.Duration  `json:"host_list_ns"`
	Heartbeats   HeartbeatStats `json:"heartbeats"` // during the create phase
}

// RunPlacement starts a Shoal server with embedded etcd in a fresh
// directory, registers o.Hosts simulated hosts that keep heartbeating,
// creates o.VMs VMs through the REST API with o.Concurrency clients, and
// reports placements per second (answers 201, so written to etcd),
// latency, the spread over hosts and the heartbeat load. The directory is
// removed afterwards.
func RunPlacement(ctx context.Context, log *slog.Logger, o PlacementOptions) (PlacementResult, error) {
	res := PlacementResult{Hosts: o.Hosts, VMs: o.VMs, Concurrency: o.Concurrency}
	if o.Hosts < 1 || o.VMs < 1 || o.Concurrency < 1 || o.Heartbeat <= 0 {
		return res, api.Errorf(api.ErrInvalid, "hosts, vms and concurrency must be at least 1 and the heartbeat positive")
	}
	if o.Hosts > 99999 {
		return res, api.Errorf(api.ErrInvalid, "at most 99999 simulated hosts")
	}
	progress := func(format string, args ...any) {
		if o.Progress != nil {
			fmt.Fprintf(o.Progress, format+"\n", args...)
		}
	}
	if o.DataDir != "" {
		if err := os.MkdirAll(o.DataDir, 0o750); err != nil {
			return res, fmt.Errorf("data dir: %w", err)
		}
	}
	dir, err := os.MkdirTemp(o.DataDir, "shoal-bench-placement-")
	if err != nil {
		return res, fmt.Errorf("data dir: %w", err)
	}
	defer os.RemoveAll(dir)

	srv, err := startServer(ctx, log, dir)
	if err != nil {
		return res, err
	}
	defer srv.stop()
	cli, err := srv.etcd(ctx)
	if err != nil {
		return res, err
	}
	defer cli.Close()
	st := store.New(cli)
	if err := st.PutNetwork(ctx, api.Network{Name: SimNetwork, Bridge: "simbr0", Subnet: SimSubnet, Gateway: "10.64.0.1"}); err != nil {
		return res, err
	}
	if err := st.CreateProject(ctx, api.Project{Name: SimProject, Limits: SimLimits, CreatedAt: time.Now().UTC()}); err != nil {
		return res, err
	}

	progress("registering %d simulated hosts (no QEMU)...", o.Hosts)
	local := agentapi.NewLocal(st, log)
	t0 := time.Now()
	if err := registerHosts(ctx, local, o.Hosts, 32, o.Heartbeat); err != nil {
		return res, err
	}
	res.RegisterTime = time.Since(t0)
	hb := &heartbeats{cp: local, log: log, n: o.Hosts, interval: o.Heartbeat}
	hctx, stopBeats := context.WithCancel(ctx)
	beatsDone := make(chan struct{})
	go func() { defer close(beatsDone); hb.run(hctx) }()
	defer func() { stopBeats(); <-beatsDone }()

	c := newAPIClient(srv.socket, srv.token, o.Concurrency)
	var warm api.VM // a stopped VM: it loads the server's placement cache and allocates nothing
	if _, err := c.create(ctx, "sim-warmup", false, &warm); err != nil {
		return res, fmt.Errorf("first create: %w", err)
	}
	progress("creating %d VMs with %d concurrent API clients...", o.VMs, o.Concurrency)
	if o.CPUProfile != "" {
		f, err := os.Create(o.CPUProfile)
		if err != nil {
			return res, fmt.Errorf("cpu profile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return res, fmt.Errorf("cpu profile: %w", err)
		}
	}
	hb.reset()
	lat, refused, firstErr, elapsed := createMany(ctx, c, o, progress)
	if o.CPUProfile != "" {
		pprof.StopCPUProfile()
	}
	res.Heartbeats = hb.stats()
	res.Elapsed, res.Created, res.Refused = elapsed, len(lat), refused
	if firstErr != nil {
		res.FirstError = firstErr.Error()
	}
	res.PerSecond = float64(len(lat)) / elapsed.Seconds()
	res.P50, res.P99 = percentile(lat, 50), percentile(lat, 99)
	if len(lat) > 0 {
		res.Max = slices.Max(lat)
	}
	if err := ctx.Err(); err != nil {
		return res, fmt.Errorf("placement benchmark: %w", err)
	}

	cnt, err := cli.Get(ctx, store.VMPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return res, fmt.Errorf("count VMs in etcd: %w", err)
	}
	res.InEtcd = cnt.Count - 1 // without the warm-up VM
	p, _, err := st.GetProject(ctx, SimProject)
	if err != nil {
		return res, err
	}
	res.ProjectVMs = int64(p.Usage.VMs) - 1
	t0 = time.Now()
	hosts, err := c.hosts(ctx)
	if err != nil {
		return res, err
	}
	res.HostListTime = time.Since(t0)
	res.SpreadMin = -1
	for _, h := range hosts {
		if h.Accel != simAccel {
			continue
		}
		if h.State == api.HostUp {
			res.HostsUp++
		}
		n := h.VMs
		if h.Name == warm.Host {
			n--
		}
		if res.SpreadMin < 0 || n < res.SpreadMin {
			res.SpreadMin = n
		}
		res.SpreadMax = max(res.SpreadMax, n)
	}
	return res, nil
}

// createMany creates o.VMs VMs with o.Concurrency clients and returns the
// latency of each 201 answer, how many other answers came, the first
// error, and the time it all took.
func createMany(ctx context.Context, c *apiClient, o PlacementOptions, progress func(string, ...any)) ([]time.Duration, int, error, time.Duration) {
	var next, ok atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	var refused int
	var firstErr error
	var wg sync.WaitGroup
	t0 := time.Now()
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				n := ok.Load()
				progress("  %d created after %s (%.0f/s)", n, time.Since(t0).Round(time.Second), float64(n)/time.Since(t0).Seconds())
			}
		}
	}()
	for range o.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mine := make([]time.Duration, 0, o.VMs/o.Concurrency+1)
			defer func() {
				mu.Lock()
				lat = append(lat, mine...)
				mu.Unlock()
			}()
			for {
				i := int(next.Add(1))
				if i > o.VMs || ctx.Err() != nil {
					return
				}
				t := time.Now()
				created, err := c.create(ctx, fmt.Sprintf("sim-vm-%07d", i), true, nil)
				if created {
					mine = append(mine, time.Since(t))
					ok.Add(1)
					continue
				}
				mu.Lock()
				refused++
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(done)
	return lat, refused, firstErr, time.Since(t0)
}

// benchServer is a Shoal server (node.Run without an agent) in this
// process.
type benchServer struct {
	dir, socket, token string
	etcdURL            string
	cancel             context.CancelFunc
	done               chan error
}

func startServer(ctx context.Context, log *slog.Logger, dir string) (*benchServer, error) {
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	o := node.Options{DataDir: dir, Host: "bench-server", NoAgent: true,
		Listen:     fmt.Sprintf("127.0.0.1:%d", ports[0]),
		EtcdClient: fmt.Sprintf("https://127.0.0.1:%d", ports[1]),
		EtcdPeer:   fmt.Sprintf("https://127.0.0.1:%d", ports[2])}
	nctx, cancel := context.WithCancel(ctx)
	s := &benchServer{dir: dir, etcdURL: o.EtcdClient, cancel: cancel, done: make(chan error, 1)}
	ready := make(chan node.Info, 1)
	go func() { s.done <- node.Run(nctx, log, o, func(i node.Info) { ready <- i }) }()
	select {
	case i := <-ready:
		s.socket, s.token = i.Socket, i.Token
		return s, nil
	case err := <-s.done:
		cancel()
		if err == nil {
			err = errors.New("stopped before it served")
		}
		return nil, fmt.Errorf("start the Shoal server: %w", err)
	}
}

// etcd connects to the server's embedded etcd with the cluster's
// certificates, as another member of the control plane would.
func (s *benchServer) etcd(ctx context.Context) (*clientv3.Client, error) {
	tc, err := pki.ClientConfig(filepath.Join(s.dir, "pki"))
	if err != nil {
		return nil, err
	}
	return store.ConnectTLS(ctx, []string{s.etcdURL}, tc)
}

func (s *benchServer) stop() {
	s.cancel()
	<-s.done
}

func freePorts(n int) ([]int, error) {
	var out []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		defer l.Close()
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}

// apiClient calls the REST API over the server's unix socket, keeping a
// connection per concurrent caller.
type apiClient struct {
	http  *http.Client
	token string
}

func newAPIClient(socket, token string, conns int) *apiClient {
	var d net.Dialer
	tr := &http.Transport{
		DialContext:         func(ctx context.Context, _, _ string) (net.Conn, error) { return d.DialContext(ctx, "unix", socket) },
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		IdleConnTimeout:     time.Minute,
	}
	return &apiClient{http: &http.Client{Transport: tr}, token: token}
}

// create asks for a running VM, without waiting for a host to start it
// (no agent runs here), and reports whether the answer was 201 Created;
// out, if not nil, receives the VM.
func (c *apiClient) create(ctx context.Context, name string, start bool, out *api.VM) (bool, error) {
	body, _ := json.Marshal(api.CreateVMRequest{Name: name, Image: "tiny", Network: SimNetwork, Project: SimProject, Memory: "256M", CPUs: 1, Start: start})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://shoal/v1/vms?wait=false", bytes.NewReader(body))
	if err != nil {
		return false, fmt.Errorf("create %s: %w", name, err)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return false, fmt.Errorf("create %s: %w", name, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusCreated {
		return false, fmt.Errorf("create %s: %s: %s", name, resp.Status, bytes.TrimSpace(b))
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return true, fmt.Errorf("create %s: %w", name, err)
		}
	}
	return true, nil
}

func (c *apiClient) hosts(ctx context.Context) ([]api.Host, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://shoal/v1/hosts", nil)
	if err != nil {
		return nil, fmt.Errorf("list hosts: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("list hosts: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("list hosts: %s: %s", resp.Status, bytes.TrimSpace(b))
	}
	var out []api.Host
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, fmt.Errorf("list hosts: %w", err)
	}
	return out, nil
}

// percentile returns the p-th percentile (nearest rank) of d.
func percentile(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[max(i-1, 0)]
}
