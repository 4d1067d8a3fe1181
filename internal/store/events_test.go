package store_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/store"
	"github.com/shoalvm/shoal/internal/store/storetest"
)

func TestEventsOrderFilterAndBound(t *testing.T) {
	ctx := context.Background()
	s := storetest.New(t)
	base := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	// Recorded out of time order: listings follow the events' times.
	add := func(min int, kind, vm, host, to string) api.Event {
		t.Helper()
		e, err := s.AppendEvent(ctx, api.Event{Time: base.Add(time.Duration(min) * time.Minute), Kind: kind,
			Severity: api.SeverityInfo, VM: vm, Host: host, To: to, Message: kind})
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	add(3, "c", "web1", "host2", "")
	add(1, "a", "web1", "host1", "host2")
	add(2, "b", "db1", "host1", "")
	add(4, "d", "", "host3", "")
	kinds := func(evs []api.Event) string {
		var out string
		for _, e := range evs {
			out += e.Kind
		}
		return out
	}
	tests := []struct {
		name string
		f    store.EventFilter
		want string
	}{
		{"all, oldest first", store.EventFilter{}, "abcd"},
		{"newest two", store.EventFilter{Limit: 2}, "cd"},
		{"by vm", store.EventFilter{VM: "web1"}, "ac"},
		{"by host, as source or target", store.EventFilter{Host: "host2"}, "ac"},
		{"by host and limit", store.EventFilter{Host: "host1", Limit: 1}, "b"},
		{"since", store.EventFilter{Since: base.Add(2 * time.Minute)}, "bcd"},
		{"since, by vm", store.EventFilter{Since: base.Add(2 * time.Minute), VM: "web1"}, "c"},
		{"nothing matches", store.EventFilter{VM: "ghost"}, ""},
	}
	for _, tc := range tests {
		got, err := s.ListEvents(ctx, tc.f)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got == nil || kinds(got) != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, kinds(got), tc.want)
		}
	}

	// After pages forward from an id: the oldest Limit newer than it.
	all, _ := s.ListEvents(ctx, store.EventFilter{})
	if got, _ := s.ListEvents(ctx, store.EventFilter{After: all[0].ID, Limit: 2}); kinds(got) != "bc" {
		t.Errorf("after a, limit 2: got %q", kinds(got))
	}
	if got, _ := s.ListEvents(ctx, store.EventFilter{After: all[3].ID}); len(got) != 0 {
		t.Errorf("after the newest: got %q", kinds(got))
	}
	if !slices.IsSortedFunc(all, func(a, b api.Event) int { return a.Time.Compare(b.Time) }) {
		t.Errorf("not in time order: %+v", all)
	}

	// Each event expires: it carries a lease of about EventTTL.
	resp, err := s.Client().Get(ctx, store.Prefix+"events/"+all[0].ID)
	if err != nil || len(resp.Kvs) != 1 || resp.Kvs[0].Lease == 0 {
		t.Fatalf("event record: %v %+v", err, resp)
	}
	ttl, err := s.Client().TimeToLive(ctx, clientv3.LeaseID(resp.Kvs[0].Lease))
	if err != nil || ttl.TTL < int64(store.EventTTL/time.Second)-60 {
		t.Fatalf("event lease ttl %+v: %v", ttl, err)
	}

	// The bound: trimming keeps the newest.
	for i := range 30 {
		add(10+i, fmt.Sprintf("n%02d,", i), "", "", "")
	}
	n, err := s.TrimEvents(ctx, 5)
	if err != nil || n != 29 {
		t.Fatalf("trim: deleted %d, %v", n, err)
	}
	got, _ := s.ListEvents(ctx, store.EventFilter{})
	if kinds(got) != "n25,n26,n27,n28,n29," {
		t.Errorf("after trim: %q", kinds(got))
	}
	if n, err := s.TrimEvents(ctx, 5); err != nil || n != 0 {
		t.Errorf("second trim: %d %v", n, err)
	}
}

func TestEventsPaging(t *testing.T) {
	ctx := context.Background()
	s := storetest.New(t)
	base := time.Now().Add(-time.Hour)
	// More than one page of events, few of them about web1.
	for i := range 1200 {
		vm := "other"
		if i%100 == 0 {
			vm = "web1"
		}
		if _, err := s.AppendEvent(ctx, api.Event{Time: base.Add(time.Duration(i) * time.Millisecond), Kind: "k", VM: vm, Message: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.ListEvents(ctx, store.EventFilter{VM: "web1", Limit: 5})
	if err != nil {
		t.Fatal(err)
	}
	var msgs []string
	for _, e := range got {
		msgs = append(msgs, e.Message)
	}
	if fmt.Sprint(msgs) != "[700 800 900 1000 1100]" {
		t.Errorf("newest 5 of web1: %v", msgs)
	}
	all, _ := s.ListEvents(ctx, store.EventFilter{})
	if len(all) != 1200 || all[0].Message != "0" || all[1199].Message != "1199" {
		t.Errorf("all: %d events, first %q", len(all), all[0].Message)
	}
	fwd, _ := s.ListEvents(ctx, store.EventFilter{After: all[10].ID, Limit: 600})
	if len(fwd) != 600 || fwd[0].Message != "11" || fwd[599].Message != "610" {
		t.Errorf("forward page: %d events", len(fwd))
	}
}
