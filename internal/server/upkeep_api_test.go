package server

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/store"
	"github.com/shoalvm/shoal/internal/store/storetest"
)

// TestUpkeepKeepsEtcdWritable fills an embedded etcd with a 4 MiB quota by
// overwriting one key: without upkeep etcd raises NOSPACE and refuses
// writes, which GET /v1/cluster/status shows with what to do. A server
// that starts then compacts, defragments and clears the alarm (events
// say so), and with its upkeep running the same overwrites, 8 times the
// quota, all succeed.
func TestUpkeepKeepsEtcdWritable(t *testing.T) {
	const quota = 4 << 20
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	st := storetest.NewQuota(t, quota)
	must(t, st.PutToken(ctx, apiTestToken, store.TokenInfo{Name: "admin", Role: "admin", CreatedAt: time.Now()}))
	cfg := Config{ImageDir: t.TempDir(), Name: "s1",
		Upkeep: UpkeepConfig{Every: 50 * time.Millisecond, Retain: -1, DefragMinFree: 256 << 10, DefragEvery: time.Nanosecond, QuotaBytes: quota}}
	srv := New(cfg, st, slog.New(slog.DiscardHandler))
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	h := &apiHarness{t: t, st: st, srv: srv, cfg: cfg, url: ts.URL}

	blob := strings.Repeat("x", 32<<10)
	// Overwrites at up to 16 MiB/s: the upkeep, every 50 ms, keeps up
	// (it is meant for etcd's quota and Shoal's pace: by default every
	// minute, the last 5 min kept).
	overwrite := func(n int) error {
		for i := range n {
			if _, err := st.Client().Put(ctx, "/test/blob", blob[i%7:]); err != nil {
				return err
			}
			time.Sleep(2 * time.Millisecond)
		}
		return nil
	}
	err := overwrite(1000)
	if err == nil || !strings.Contains(err.Error(), "database space exceeded") {
		t.Fatalf("without upkeep, 1000 overwrites of 32 KiB in a 4 MiB etcd: %v, want NOSPACE", err)
	}
	var cs api.ClusterStatus
	h.call("GET", "/v1/cluster/status", nil).decodeOK(t, 200, &cs)
	if cs.QuotaBytes != quota || len(cs.Members) != 1 || cs.Members[0].DBSizeBytes < quota*9/10 || !cs.Members[0].Leader ||
		len(cs.Alarms) != 1 || cs.Alarms[0].Kind != "NOSPACE" || !strings.Contains(cs.Advice, "etcdctl alarm disarm") {
		t.Fatalf("cluster status of a full etcd: %+v", cs)
	}

	sctx, stop := context.WithCancel(ctx)
	t.Cleanup(stop) // before etcd stops
	must(t, srv.Start(sctx))
	if err := overwrite(1); err != nil {
		t.Fatalf("a write after the server started: %v", err)
	}
	h.call("GET", "/v1/cluster/status", nil).decodeOK(t, 200, &cs)
	if len(cs.Alarms) != 0 || cs.Members[0].DBSizeBytes >= quota/2 {
		t.Fatalf("cluster status after the upkeep: %+v", cs)
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		var evs []api.Event
		h.call("GET", "/v1/events", nil).decodeOK(t, 200, &evs)
		var kinds []string
		for _, e := range evs {
			kinds = append(kinds, e.Kind)
			if e.Kind == api.EventEtcdAlarm && !strings.Contains(e.Message, "NOSPACE") {
				t.Fatalf("alarm event: %+v", e)
			}
		}
		if strings.Join(kinds, " ") == api.EventEtcdAlarm+" "+api.EventEtcdAlarmCleared {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("events: %v, want the alarm then its clearing", kinds)
		}
		time.Sleep(50 * time.Millisecond)
	}

	if err := overwrite(1000); err != nil {
		t.Fatalf("with the upkeep running, 1000 overwrites of 32 KiB in a 4 MiB etcd: %v", err)
	}
	rev, err := st.Revision(ctx)
	must(t, err)
	if _, err := srv.cache.lookup(ctx, rev, "tiny", "default", "local"); err != nil {
		t.Fatalf("the placement cache after compactions: %v", err)
	}
}
