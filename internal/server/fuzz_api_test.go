package server

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/store"
	"github.com/shoalvm/shoal/internal/store/storetest"
)

// fuzzRoutes are the calls FuzzAPIRequests sends, NAME standing for the
// fuzzed name.
var fuzzRoutes = []struct{ method, path string }{
	{"POST", "/v1/vms?wait=false"},
	{"PATCH", "/v1/vms/NAME?wait=false"},
	{"POST", "/v1/vms/NAME/start?wait=false"},
	{"POST", "/v1/vms/NAME/stop?wait=false"},
	{"POST", "/v1/vms/NAME/migrate"},
	{"DELETE", "/v1/vms/NAME?wait=false"},
	{"GET", "/v1/vms/NAME"},
	{"POST", "/v1/hosts/NAME/drain"},
	{"POST", "/v1/cluster/tokens"},
	{"POST", "/v1/join"},
	{"POST", ServerJoinPath},
	{"GET", "/v1/events?since=NAME"},
	{"POST", "/v1/projects"},
	{"GET", "/v1/projects/NAME"},
	{"DELETE", "/v1/projects/NAME"},
}

// FuzzAPIRequests: no request body, name or query makes the API answer
// 500 or panic; bad input is a 4xx.
func FuzzAPIRequests(f *testing.F) {
	seeds := []string{
		`{"name":"web1","image":"tiny","memory":"256M","disk":"1G","cpus":1}`,
		`{"name":"web1","image":"tiny","memory":"-1","disk":"1e99T","cpus":-5}`,
		`{"name":"","image":""}`,
		`{"ha":true,"priority":"urgent"}`,
		`{"to":"host9","downtime_ms":-1}`,
		`{"force":true}`,
		`{"ttl":"99999h"}`,
		`{"token":"x.y","host":"h1","csr":"-----BEGIN CERTIFICATE REQUEST-----"}`,
		`{"token":"x","name":"s2","peer_url":"http://[::1","hosts":[]}`,
		`{"name":"dev","max_vms":-1,"max_cpus":16,"max_memory":"1.5K","max_disk":"200G"}`,
		`null`, `[]`, `{}`, `{"name":1}`, "\x00", `{"name":"a"}{"name":"b"}`,
	}
	for i, s := range seeds {
		f.Add(uint8(i), "web1", []byte(s))
	}
	f.Add(uint8(6), "..%2f..%2fetc", []byte(nil))
	f.Add(uint8(11), "1h", []byte(nil))

	ctx := context.Background()
	st := storetest.New(f)
	must(f, st.PutToken(ctx, apiTestToken, store.TokenInfo{Name: "admin", Role: "admin", CreatedAt: time.Now()}))
	must(f, st.PutNetwork(ctx, api.Network{Name: "default", Bridge: "shoal0", Subnet: "10.57.0.0/24", Gateway: "10.57.0.1"}))
	putHost(f, st, testHost("host1", 4096, 4))
	must(f, st.PutImage(ctx, api.Image{Name: "tiny", Format: "qcow2", Source: "built: tiny", SizeBytes: 64 << 20, Kernel: true}))
	srv := New(Config{ImageDir: f.TempDir(), PKIDir: f.TempDir(), WaitTimeout: time.Second}, st, slog.New(slog.DiscardHandler))

	// The fuzzed calls get past authentication to the handlers.
	req := httptest.NewRequest("GET", "/v1/vms", nil)
	req.Header.Set("Authorization", "Bearer "+apiTestToken)
	rec := httptest.NewRecorder()
	srv.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		f.Fatalf("the fuzz's token is refused: %d %s", rec.Code, rec.Body)
	}

	f.Fuzz(func(t *testing.T, route uint8, name string, body []byte) {
		rt := fuzzRoutes[int(route)%len(fuzzRoutes)]
		path := strings.ReplaceAll(rt.path, "NAME", url.PathEscape(name))
		if strings.Contains(rt.path, "?since=NAME") {
			path = strings.ReplaceAll(rt.path, "NAME", url.QueryEscape(name))
		}
		req := httptest.NewRequest(rt.method, path, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+apiTestToken)
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, req)
		if rec.Code >= 500 && rec.Code != http.StatusServiceUnavailable {
			t.Fatalf("%s %s with body %q: %d %s", rt.method, path, body, rec.Code, rec.Body)
		}
	})
}
