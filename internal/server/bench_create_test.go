package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/authz"
	"github.com/shoalvm/shoal/internal/cpumodel"
	"github.com/shoalvm/shoal/internal/store"
	"github.com/shoalvm/shoal/internal/store/storetest"
)

// BenchmarkCreateVM1kHosts is the create path (HTTP, validation,
// placement over 1,000 hosts, address, the etcd transaction with fsync)
// with real embedded etcd and 1,000 hosts that each hold a liveness
// lease; 64 clients create at once. No root, no QEMU. For the full run
// with heartbeating simulated hosts see 'shoal bench placement'.
//
//	go test -run '^$' -bench CreateVM1kHosts -benchtime 20000x ./internal/server/
func BenchmarkCreateVM1kHosts(b *testing.B) {
	ts, token := benchServer(b, 1000)
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	var n atomic.Int64
	create := func() error {
		body, _ := json.Marshal(api.CreateVMRequest{Name: fmt.Sprintf("vm-%07d", n.Add(1)), Image: "tiny", Memory: "256M", Start: true, Project: benchProject})
		req, _ := http.NewRequest("POST", ts.URL+"/v1/vms?wait=false", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			var eb api.ErrorBody
			_ = json.NewDecoder(resp.Body).Decode(&eb)
			return fmt.Errorf("create: %d %s", resp.StatusCode, eb.Error)
		}
		return nil
	}
	must(b, create())    // loads the placement cache
	b.SetParallelism(32) // x GOMAXPROCS clients
	b.ResetTimer()
	t0 := time.Now()
	var failed atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := create(); err != nil {
				if failed.Add(1) == 1 {
					b.Error(err)
				}
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(t0).Seconds(), "placements/s")
}

// benchProject is where the benchmarks create, with quotas on but never
// reached (as bench.SimProject, which this package cannot import).
const benchProject = "bench"

var benchLimits = api.Limits{VMs: 1 << 30, CPUs: 1 << 30, MemoryMiB: 1 << 40, DiskBytes: 1 << 60}

// benchServer serves the API over real embedded etcd with hosts
// simulated hosts (records and liveness leases), the default network of
// 10.64.0.0/10, the tiny image, and user admin; it returns the server and
// a token of admin, made as 'shoal up' makes it, and benchProject.
func benchServer(b *testing.B, hosts int) (*httptest.Server, string) {
	ctx := context.Background()
	st := storetest.New(b)
	must(b, st.CreateUser(ctx, store.User{User: api.User{Name: "admin", Role: api.RoleAdmin, CreatedAt: time.Now()}}))
	u, err := st.GetUser(ctx, "admin")
	must(b, err)
	token := authz.NewToken()
	must(b, st.CreateToken(ctx, token, store.TokenInfo{User: "admin", UserGen: u.Gen, Role: api.RoleAdmin, CreatedAt: time.Now()}))
	must(b, st.PutNetwork(ctx, api.Network{Name: "default", Bridge: "shoal0", Subnet: "10.64.0.0/10", Gateway: "10.64.0.1"}))
	must(b, st.PutImage(ctx, api.Image{Name: "tiny", Format: "qcow2", SizeBytes: 64 << 20, Kernel: true}))
	// Creates go into a project with quotas, as in 'shoal bench placement'.
	must(b, st.CreateProject(ctx, api.Project{Name: benchProject, Limits: benchLimits}))
	for i := range hosts {
		h := api.Host{Name: fmt.Sprintf("bench-%04d", i), State: api.HostUp, CPUs: 64, MemoryMiB: 256 << 10,
			CPUFlags: cpumodel.TCGFlags(), Accel: "simulated", Pools: []string{"local"}, LastHeartbeat: time.Now().UTC()}
		must(b, st.PutHost(ctx, h))
		_, err := st.MarkAlive(ctx, h.Name, time.Hour)
		must(b, err)
	}
	ts := httptest.NewServer(New(Config{ImageDir: b.TempDir()}, st, slog.New(slog.DiscardHandler)))
	b.Cleanup(ts.Close)
	return ts, token
}
