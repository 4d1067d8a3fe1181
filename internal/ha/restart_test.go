package ha

import (
	"testing"
	"time"
)

func TestRestartPolicyNext(t *testing.T) {
	t0 := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	at := func(offsets ...time.Duration) []time.Time {
		var out []time.Time
		for _, o := range offsets {
			out = append(out, t0.Add(o))
		}
		return out
	}
	s, m := time.Second, time.Minute
	def := DefaultRestartPolicy()
	tests := []struct {
		name    string
		p       RestartPolicy
		crashes []time.Time
		now     time.Duration // after t0
		wait    time.Duration
		giveUp  bool
	}{
		{"no crash", def, nil, 0, 0, false},
		{"first crash waits Base", def, at(0), 0, 1 * s, false},
		{"second doubles", def, at(0, 5*s), 5 * s, 2 * s, false},
		{"third doubles again", def, at(0, 5*s, 10*s), 10 * s, 4 * s, false},
		{"fourth within the period gives up", def, at(0, 5*s, 10*s, 20*s), 20 * s, 0, true},
		{"order of crashes does not matter", def, at(20*s, 0, 10*s, 5*s), 20 * s, 0, true},
		{"the wait is counted from the crash", def, at(0, 5*s, 10*s), 12 * s, 2 * s, false},
		{"a wait that has passed is zero", def, at(0, 5*s, 10*s), 30 * s, 0, false},
		{"crashes older than the period are forgotten", def, at(0, 5*s, 10*s, 11*m), 11 * m, 1 * s, false},
		{"exactly one period old is forgotten", def, at(0, 10*m), 10 * m, 1 * s, false},
		{"crashes in the future are ignored", def, at(0, time.Hour), 0, 1 * s, false},
		{"all forgotten: nothing to do", def, at(0), time.Hour, 0, false},
		{"limit 0 never restarts", RestartPolicy{Base: s, Max: m, Limit: 0, Period: m}, at(0), 0, 0, true},
		{"doubling stops at Max", RestartPolicy{Base: s, Max: 5 * s, Limit: 10, Period: time.Hour},
			at(0, 1*s, 2*s, 3*s, 4*s), 4 * s, 5 * s, false},
		{"Max below Base means no doubling", RestartPolicy{Base: 3 * s, Limit: 5, Period: time.Hour},
			at(0, 1*s, 2*s), 2 * s, 3 * s, false},
		{"zero Base restarts at once", RestartPolicy{Max: 5 * s, Limit: 5, Period: time.Hour},
			at(0, 1*s, 2*s), 2 * s, 0, false},
		{"limit reached exactly still restarts", RestartPolicy{Base: s, Max: m, Limit: 2, Period: m},
			at(0, s), s, 2 * s, false},
		{"one past the limit gives up", RestartPolicy{Base: s, Max: m, Limit: 2, Period: m},
			at(0, s, 2*s), 2 * s, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wait, giveUp := tt.p.Next(tt.crashes, t0.Add(tt.now))
			if wait != tt.wait || giveUp != tt.giveUp {
				t.Errorf("Next = %s, %v; want %s, %v", wait, giveUp, tt.wait, tt.giveUp)
			}
		})
	}
}

func TestRestartPolicyRecent(t *testing.T) {
	t0 := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	p := DefaultRestartPolicy()
	crashes := []time.Time{t0, t0.Add(time.Minute), t0.Add(20 * time.Minute), t0.Add(15 * time.Minute)}
	n, last := p.Recent(crashes, t0.Add(20*time.Minute))
	if n != 2 || !last.Equal(t0.Add(20*time.Minute)) {
		t.Errorf("Recent = %d, %s", n, last)
	}
}

func TestRestartPolicyString(t *testing.T) {
	if got := DefaultRestartPolicy().String(); got != "3 restarts in 10m" {
		t.Errorf("String = %q", got)
	}
	for d, want := range map[time.Duration]string{
		10 * time.Minute: "10m", 90 * time.Minute: "1h30m", 2 * time.Hour: "2h",
		2 * time.Second: "2s", 1500 * time.Millisecond: "1.5s", 61 * time.Second: "1m1s",
	} {
		if got := ShortDuration(d); got != want {
			t.Errorf("ShortDuration(%s) = %q, want %q", d, got, want)
		}
	}
}
