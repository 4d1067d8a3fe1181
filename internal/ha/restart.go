package ha

import (
	"fmt"
	"strings"
	"time"
)

// RestartPolicy decides whether, and after how long, a host restarts a VM
// in place whose QEMU died or whose guest crashed (not one whose guest
// powered itself off). It is the in-place counterpart of failover's
// thresholds: like Failover Clustering's "maximum restarts in the
// specified period", a VM that keeps crashing is given up and marked
// failed rather than restarted forever.
//
// The n-th crash within Period is restarted after Base·2^(n-1), at most
// Max, counted from that crash; the crash after Limit restarts within
// Period gives up. Pure: the caller passes the crash times and the time.
type RestartPolicy struct {
	Base   time.Duration // wait before the first restart
	Max    time.Duration // longest wait; doubling stops here (at most Base: no doubling)
	Limit  int           // restarts allowed within Period; 0 = never restart in place
	Period time.Duration // crashes older than this are forgotten
}

// DefaultRestartPolicy restarts after 1s, 2s, 4s (doubling up to 30s) and
// gives up on the 4th crash within 10 minutes: a guest that crashes at
// boot is failed within seconds, one that crashes once a day is restarted
// each time.
func DefaultRestartPolicy() RestartPolicy {
	return RestartPolicy{Base: time.Second, Max: 30 * time.Second, Limit: 3, Period: 10 * time.Minute}
}

// Recent returns how many of crashes fall within Period before now, and
// the latest of them.
func (p RestartPolicy) Recent(crashes []time.Time, now time.Time) (n int, last time.Time) {
	for _, c := range crashes {
		if c.After(now) || now.Sub(c) >= p.Period {
			continue
		}
		n++
		if c.After(last) {
			last = c
		}
	}
	return n, last
}

// Next decides after the latest of crashes (the times of the VM's crashes,
// the latest included): giveUp when there were more than Limit within
// Period, else the wait still left, at now, before restarting. Asked again
// later with the same crashes it answers the shorter wait left, so its
// caller may ask on every pass.
func (p RestartPolicy) Next(crashes []time.Time, now time.Time) (wait time.Duration, giveUp bool) {
	n, last := p.Recent(crashes, now)
	if n == 0 {
		return 0, false
	}
	if n > p.Limit {
		return 0, true
	}
	return max(p.backoff(n)-now.Sub(last), 0), false
}

// backoff is the wait after the n-th recent crash (n >= 1).
func (p RestartPolicy) backoff(n int) time.Duration {
	d, ceiling := max(p.Base, 0), max(p.Max, p.Base, 0)
	for i := 1; i < n && d < ceiling; i++ {
		d *= 2
	}
	return min(d, ceiling)
}

// String describes the policy for people: "3 restarts in 10m".
func (p RestartPolicy) String() string {
	return fmt.Sprintf("%d restarts in %s", p.Limit, ShortDuration(p.Period))
}

// ShortDuration writes d without trailing zero units: "10m", "1h30m",
// "2s", "1.5s".
func ShortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
