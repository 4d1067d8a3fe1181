package server

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
)

// BenchmarkCreateVMLatency is one client creating VMs one after the other
// (wait=false) over 100 hosts, with real embedded etcd: what a create
// costs, authentication, authorization and audit included; it reports
// the median and the 99th percentile. Compare with the code before a
// change by running it on both.
//
//	go test -run '^$' -bench CreateVMLatency -benchtime 2000x ./internal/server/
func BenchmarkCreateVMLatency(b *testing.B) {
	ts, token := benchServer(b, 100)
	create := func(i int) time.Duration {
		body, _ := json.Marshal(api.CreateVMRequest{Name: fmt.Sprintf("vm-%07d", i), Image: "tiny", Memory: "256M", Project: benchProject})
		req, _ := http.NewRequest("POST", ts.URL+"/v1/vms?wait=false", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		t0 := time.Now()
		resp, err := http.DefaultClient.Do(req)
		d := time.Since(t0)
		if err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			b.Fatalf("create: %d", resp.StatusCode)
		}
		return d
	}
	create(0) // loads the placement cache
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		lat = append(lat, create(i+1))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}
