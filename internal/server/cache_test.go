package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/store"
)

// post sends an authenticated create without a testing.T, for use from
// several goroutines.
func (h *apiHarness) post(req api.CreateVMRequest) (int, string, error) {
	b, _ := json.Marshal(req)
	r, err := http.NewRequest("POST", h.url+"/v1/vms?wait=false", bytes.NewReader(b))
	if err != nil {
		return 0, "", err
	}
	r.Header.Set("Authorization", "Bearer "+apiTestToken)
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(resp.Body)
	return resp.StatusCode, buf.String(), nil
}

// Concurrent creates are placed one at a time against what the others
// reserved: a host never takes more than it has, and no address is
// handed out twice.
func TestCacheConcurrentCreatesNeverDoubleBook(t *testing.T) {
	t.Parallel()
	h := newAPIHarness(t, testHost("host1", 1024, 4), testHost("host2", 1024, 4))
	const n = 24
	var wg sync.WaitGroup
	codes := make([]int, n)
	bodies := make([]string, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i], bodies[i], errs[i] = h.post(api.CreateVMRequest{Name: fmt.Sprintf("vm%d", i), Image: "tiny", Memory: "256M", Start: true})
		}()
	}
	wg.Wait()
	created := 0
	for i := range n {
		switch {
		case errs[i] != nil:
			t.Fatal(errs[i])
		case codes[i] == http.StatusCreated:
			created++
		case codes[i] != http.StatusInsufficientStorage || !strings.Contains(bodies[i], "no host fits"):
			t.Errorf("create vm%d: %d %s", i, codes[i], bodies[i])
		}
	}
	if created != 8 {
		t.Errorf("%d creates succeeded, want 8 (4 per host)", created)
	}
	specs, _, err := h.st.ListVMs(context.Background())
	must(t, err)
	per := map[string]int64{}
	ips := map[string]bool{}
	for _, sp := range specs {
		per[sp.Host] += sp.MemoryMiB
		if ips[sp.IP] {
			t.Errorf("address %s given twice", sp.IP)
		}
		ips[sp.IP] = true
	}
	for host, mib := range per {
		if mib > 1024 {
			t.Errorf("%s holds %d MiB of VMs, has 1024", host, mib)
		}
	}
	if u := h.usedIPs(); len(u) != created {
		t.Errorf("%d addresses reserved in the store for %d VMs", len(u), created)
	}
}

// A write the watch never reports (outside Shoal's keyspace) still lets a
// caller that waits for the current revision through, by a progress
// notification.
func TestCacheProgressPastForeignWrites(t *testing.T) {
	t.Parallel()
	h := newAPIHarness(t)
	h.createVM(api.CreateVMRequest{Name: "a", Image: "tiny"})
	_, err := h.st.Client().Put(context.Background(), "/not-shoal/x", "y")
	must(t, err)
	t0 := time.Now()
	var hosts []api.Host
	h.call("GET", "/v1/hosts", nil).decodeOK(t, http.StatusOK, &hosts)
	if d := time.Since(t0); d > time.Second {
		t.Errorf("host list took %s after a foreign write", d)
	}
	if len(hosts) != 1 || hosts[0].VMs != 1 {
		t.Errorf("hosts = %+v", hosts)
	}
}

// After any mix of API calls and direct store writes, the cache holds
// what a fresh read of the store gives, and a reload keeps reservations
// in flight.
func TestCacheMatchesStore(t *testing.T) {
	t.Parallel()
	h := newAPIHarness(t, testHost("host1", 4096, 4), testHost("host2", 4096, 4))
	ctx := context.Background()
	h.createVM(api.CreateVMRequest{Name: "a", Image: "tiny", Memory: "1G", Start: true, AntiAffinity: "web"})
	h.createVM(api.CreateVMRequest{Name: "b", Image: "tiny", Memory: "512M", Start: true, AntiAffinity: "web"})
	h.createVM(api.CreateVMRequest{Name: "c", Image: "tiny"})
	h.call("POST", "/v1/vms/b/stop", nil).decodeOK(t, http.StatusOK, nil)
	must(t, h.st.RemoveVM(ctx, h.spec("c")))
	host3 := testHost("host3", 8192, 8)
	host3.Pools = []string{"local", "fast"}
	putHost(t, h.st, host3)
	h.createVM(api.CreateVMRequest{Name: "d", Image: "tiny", Pool: "fast", Start: true})

	rev, err := h.st.Revision(ctx)
	must(t, err)
	c := h.srv.cache
	must(t, c.lockAt(ctx, rev))
	got := c.state
	c.mu.Unlock()
	want := newCacheState()
	for _, p := range loadPrefixes {
		_, err := h.st.Range(ctx, p, rev, want.apply)
		must(t, err)
	}
	if g, w := hostSummary(got), hostSummary(want); !reflect.DeepEqual(g, w) {
		t.Errorf("cache hosts\n%v\nstore\n%v", g, w)
	}
	if !reflect.DeepEqual(got.pools, want.pools) || got.baselineCPU() != want.baselineCPU() {
		t.Errorf("pools %v baseline %s; store: %v %s", got.pools, got.baselineCPU(), want.pools, want.baselineCPU())
	}
	for name, n := range want.nets {
		if !reflect.DeepEqual(got.nets[name].used, n.used) {
			t.Errorf("network %s: cache has %v, store %v", name, got.nets[name].used, n.used)
		}
	}

	// A reservation in flight survives a reload.
	sp := api.VMSpec{Name: "e", ID: "e1", Image: "tiny", CPUs: 1, MemoryMiB: 3000, Network: "default", Pool: "local", Power: api.PowerRunning}
	must(t, c.reserve(ctx, rev, &sp, h.cfg.Policy))
	c.mu.Lock()
	c.loaded = false
	c.mu.Unlock()
	must(t, c.lockAt(ctx, rev))
	v, e := c.state.vms["e"], c.state.hosts[sp.Host]
	c.mu.Unlock()
	if v == nil || !v.pending || e.mem < 3000 {
		t.Fatalf("after reload: reservation %+v, host %+v", v, e)
	}
	c.release(sp)
	c.mu.Lock()
	_, still := c.state.vms["e"]
	c.mu.Unlock()
	if still {
		t.Errorf("released reservation still held")
	}
}

func hostSummary(s *cacheState) map[string]string {
	out := map[string]string{}
	for _, h := range s.hostSnapshot() {
		out[h.Name] = fmt.Sprintf("%s cpus=%d mem=%d alloc=%d/%d groups=%v vms=%d",
			h.State, h.CPUs, h.MemoryMiB, h.AllocatedMiB, h.AllocatedCPUs, h.Groups, s.hosts[h.Name].vms)
	}
	return out
}

// Addresses: always the lowest free one, as netdev.Pool.Next gives, and
// the same message when none is left.
func TestCacheAllocIP(t *testing.T) {
	s := newCacheState()
	s.apply(store.Change{Key: "networks/small", Value: []byte(`{"name":"small","subnet":"10.1.0.0/29"}`)})
	var got []string
	for i := range 5 {
		a, err := s.allocIP("small", fmt.Sprint(i))
		must(t, err)
		got = append(got, a.String())
	}
	if want := []string{"10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("allocated %v, want %v", got, want)
	}
	_, err := s.allocIP("small", "x")
	if code, _ := api.HTTPStatus(err); err == nil || err.Error() != "network small: pool 10.1.0.0/29 exhausted" || code != http.StatusInsufficientStorage {
		t.Fatalf("exhausted: %v", err)
	}
	s.releaseIP("small", "10.1.0.4", "2")                                 // a failed create gives its address back
	s.apply(store.Change{Key: "ipam/small/10.1.0.3", Value: []byte("1")}) // confirmed by the watch
	s.apply(store.Change{Key: "ipam/small/10.1.0.3"})                     // then deleted
	if a, _ := s.allocIP("small", "y"); a != netip.MustParseAddr("10.1.0.3") {
		t.Fatalf("got %s, want the lowest free 10.1.0.3", a)
	}
	if a, _ := s.allocIP("small", "z"); a != netip.MustParseAddr("10.1.0.4") {
		t.Fatalf("got %s, want 10.1.0.4", a)
	}
	if _, err := s.allocIP("nope", "z"); err == nil || !api.IsNotFound(err) {
		t.Fatalf("unknown network: %v", err)
	}
}

// A create whose address another writer took after the cache looked
// learns that from the store and takes the next free address.
func TestCacheReaddressAfterLostRace(t *testing.T) {
	t.Parallel()
	h := newAPIHarness(t)
	ctx := context.Background()
	c := h.srv.cache
	rev, err := h.st.Revision(ctx)
	must(t, err)
	sp := api.VMSpec{Name: "a", ID: "aaaaaaaaaaaa", MAC: "52:54:00:00:00:01", Image: "tiny", CPUs: 1, MemoryMiB: 256,
		Network: "default", Pool: "local", Power: api.PowerRunning}
	must(t, c.reserve(ctx, rev, &sp, h.cfg.Policy))
	if sp.IP != "10.57.0.10" || sp.Host != "host1" {
		t.Fatalf("reserved %s on %s", sp.IP, sp.Host)
	}
	// Another server takes .10 meanwhile.
	_, err = h.st.Client().Put(ctx, store.Prefix+"ipam/default/10.57.0.10", "other")
	must(t, err)
	if _, err := h.st.CreateVM(ctx, sp); !store.IsAddressTaken(err) {
		t.Fatalf("create over a taken address: %v", err)
	}
	now, err := h.st.Revision(ctx)
	must(t, err)
	must(t, c.readdress(ctx, now, &sp, "bbbbbbbbbbbb"))
	if sp.IP != "10.57.0.11" || sp.ID != "bbbbbbbbbbbb" {
		t.Fatalf("readdressed to %s (id %s), want 10.57.0.11", sp.IP, sp.ID)
	}
	_, err = h.st.CreateVM(ctx, sp)
	must(t, err)
	c.commit(sp)
	var one api.Host
	h.call("GET", "/v1/hosts/host1", nil).decodeOK(t, http.StatusOK, &one)
	if one.VMs != 1 || one.AllocatedMiB != 256 {
		t.Errorf("host1 after the create: %d VMs, %d MiB", one.VMs, one.AllocatedMiB)
	}
}
