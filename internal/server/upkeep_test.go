package server

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/store"
)

func TestCompactTarget(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	h := []revAt{{t0, 10}, {t0.Add(time.Minute), 20}, {t0.Add(2 * time.Minute), 30}}
	for _, tc := range []struct {
		now  time.Duration
		want int64
	}{
		{90 * time.Second, 0}, // nothing is 5 min old yet
		{5 * time.Minute, 10},
		{6*time.Minute + time.Second, 20},
		{time.Hour, 30},
	} {
		if got := compactTarget(h, t0.Add(tc.now), 5*time.Minute); got != tc.want {
			t.Errorf("at +%v: compact to %d, want %d", tc.now, got, tc.want)
		}
	}
}

func TestDefragCandidates(t *testing.T) {
	cfg := UpkeepConfig{}
	cfg.defaults()
	now := time.Now()
	const mib = 1 << 20
	ms := []store.MemberStatus{
		{ID: 1, Name: "full-of-holes", DBSize: 400 * mib, DBSizeInUse: 100 * mib},
		{ID: 2, Name: "tight", DBSize: 400 * mib, DBSizeInUse: 390 * mib},
		{ID: 3, Name: "small", DBSize: 40 * mib, DBSizeInUse: 1 * mib}, // mostly free, but little to gain
		{ID: 4, Name: "down", Err: errors.New("no answer")},
		{ID: 5, Name: "near-quota", DBSize: 1800 * mib, DBSizeInUse: 1500 * mib},
		{ID: 6, Name: "full", DBSize: 2000 * mib, DBSizeInUse: 2000 * mib},
	}
	names := func(c []store.MemberStatus) string {
		var out []string
		for _, m := range c {
			out = append(out, m.Name)
		}
		return strings.Join(out, ",")
	}
	if got := names(defragCandidates(ms, map[uint64]time.Time{}, now, cfg, false)); got != "full-of-holes" {
		t.Errorf("first look: %s, want one member at a time", got)
	}
	last := map[uint64]time.Time{1: now.Add(-time.Minute)}
	if got := names(defragCandidates(ms, last, now, cfg, false)); got != "near-quota" {
		t.Errorf("with full-of-holes just done: %s", got)
	}
	last[5] = now.Add(-time.Minute)
	if got := names(defragCandidates(ms, last, now, cfg, false)); got != "" {
		t.Errorf("with both just done: %s", got)
	}
	if got := names(defragCandidates(ms, last, now, cfg, true)); got != "full-of-holes,tight,small,near-quota,full" {
		t.Errorf("under NOSPACE: %s, want every member that answers", got)
	}
	last[6] = now.Add(-time.Minute)
	if got := names(defragCandidates(ms, last, now, cfg, true)); got != "full-of-holes,tight,small,near-quota" {
		t.Errorf("under NOSPACE, with full still full after a try: %s", got)
	}
}

func TestClusterStatusOf(t *testing.T) {
	ms := []store.MemberStatus{{ID: 0xab, Name: "s1", Endpoint: "https://10.0.0.1:7379", Leader: true, DBSize: 5, DBSizeInUse: 3},
		{ID: 0xcd, Endpoint: "https://10.0.0.2:7379", Err: errors.New("no answer")}}
	alarms := []store.Alarm{{MemberID: 0xab, Kind: store.AlarmNoSpace}, {MemberID: 0xcd, Kind: store.AlarmNoSpace}}
	cs := clusterStatusOf(ms, alarms, 2<<30)
	if len(cs.Members) != 2 || cs.Members[0].ID != "ab" || cs.Members[1].Error != "no answer" || cs.Alarms[1].Member != "cd" {
		t.Fatalf("%+v", cs)
	}
	if strings.Count(cs.Advice, "NOSPACE:") != 1 || !strings.Contains(cs.Advice, "2.0 GiB") || !strings.Contains(cs.Advice, "etcdctl alarm disarm") {
		t.Errorf("advice: %s", cs.Advice)
	}
	if cs := clusterStatusOf(ms[:1], nil, 1); cs.Alarms == nil || cs.Advice != "" {
		t.Errorf("no alarms: %+v (want an empty list, no advice)", cs)
	}
}

func TestTurnOf(t *testing.T) {
	t0 := time.Unix(0, 0)
	names := []string{"s3", "s1", "s2"}
	var got []string
	for i := range 4 {
		got = append(got, turnOf(names, t0.Add(time.Duration(i)*time.Minute+time.Second), time.Minute))
	}
	if strings.Join(got, ",") != "s1,s2,s3,s1" || !slices.Equal(names, []string{"s3", "s1", "s2"}) {
		t.Errorf("turns %v (names now %v), want s1,s2,s3,s1 and the names untouched", got, names)
	}
	if turnOf(nil, t0, time.Minute) != "" {
		t.Error("a turn without replicas")
	}
}
