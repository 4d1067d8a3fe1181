package scheduler

import (
	"fmt"
	"testing"

	"github.com/shoalvm/shoal/internal/api"
)

// cluster builds n hosts in name order with a realistic mix: 1% down, 1% in
// maintenance, every 10th running a VM of group "web", memory use spread
// over 0..~92% so that some hosts are too full. Each host has its own
// slices, as hosts decoded from JSON do.
func cluster(n int) []Host {
	hosts := make([]Host, n)
	for i := range hosts {
		h := Host{
			Name:          fmt.Sprintf("host%05d", i),
			State:         api.HostUp,
			CPUs:          32,
			MemoryMiB:     65536,
			AllocatedMiB:  int64(i*7919) % 60000,
			AllocatedCPUs: (i * 31) % 120,
			Networks:      []string{"default", "prod"},
			Pools:         []string{"local", "shared"},
			CPUFeatures:   []string{"fpu", "sse2", "ssse3", "sse4_1", "sse4_2", "popcnt", "aes", "avx", "avx2", "bmi1", "bmi2", "fma", "vmx"},
		}
		switch {
		case i%100 == 7:
			h.State = api.HostDown
		case i%100 == 42:
			h.State = api.HostMaintenance
		}
		if i%10 == 3 {
			h.Groups = map[string]int{"web": 1}
		}
		hosts[i] = h
	}
	return hosts
}

var benchReq = Request{
	Name: "web1", CPUs: 4, MemoryMiB: 4096,
	Network: "prod", Pool: "shared", AntiAffinity: "web",
}

func benchPlace(b *testing.B, hosts []Host, req Request, wantErr bool) {
	b.ReportAllocs()
	var d Decision
	var err error
	for b.Loop() {
		d, err = Place(hosts, req, Policy{})
	}
	if (err != nil) != wantErr {
		b.Fatalf("Place: %v", err)
	}
	b.ReportMetric(float64(len(d.Rejections)), "rejections/op")
}

// BenchmarkPlace10kHosts is the target case: 10,000 hosts, a VM with a
// network, a pool and an anti-affinity group; ~20% of hosts are rejected and
// explained in the Decision.
func BenchmarkPlace10kHosts(b *testing.B) {
	benchPlace(b, cluster(10000), benchReq, false)
}

// BenchmarkPlace10kHostsFeatures adds a CPU feature check against per-host
// (unshared) feature lists, the slow path.
func BenchmarkPlace10kHostsFeatures(b *testing.B) {
	req := benchReq
	req.CPUFeatures = []string{"sse4_2", "avx2", "aes"}
	benchPlace(b, cluster(10000), req, false)
}

// BenchmarkPlace10kHostsSharedFeatures is the same with the feature lists
// shared (ShareCPUFeatures), as a driver keeping a snapshot would.
func BenchmarkPlace10kHostsSharedFeatures(b *testing.B) {
	req := benchReq
	req.CPUFeatures = []string{"sse4_2", "avx2", "aes"}
	hosts := cluster(10000)
	ShareCPUFeatures(hosts)
	benchPlace(b, hosts, req, false)
}

// BenchmarkPlace10kHostsNoFit: nothing fits, so all 10,000 hosts are
// explained, sorted-checked and summarised in the error.
func BenchmarkPlace10kHostsNoFit(b *testing.B) {
	req := benchReq
	req.MemoryMiB = 1 << 20
	benchPlace(b, cluster(10000), req, true)
}

// BenchmarkPlan100On10kHosts: a batch of 100 VMs (a drain), each seeing the
// previous ones.
func BenchmarkPlan100On10kHosts(b *testing.B) {
	hosts := cluster(10000)
	reqs := make([]Request, 100)
	for i := range reqs {
		reqs[i] = benchReq
		reqs[i].Name = fmt.Sprintf("web%d", i)
	}
	b.ReportAllocs()
	for b.Loop() {
		for _, r := range Plan(hosts, reqs, Policy{}) {
			if r.Err != nil {
				b.Fatal(r.Err)
			}
		}
	}
}
