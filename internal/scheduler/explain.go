package scheduler

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// maxListed is how many hosts a "no host fits" message names one by one;
// the rest are counted by reason, so that a big cluster gives a readable line.
const maxListed = 20

// Fixed reasons, shared by every rejection that has them.
const (
	reasonExcluded    = "excluded"
	reasonDown        = "down"
	reasonMaintenance = "in maintenance"
)

// explain turns rejects into Rejections. The reasons that are the same for
// every host of one request are made once; the ones that vary by host are
// written into one buffer, and are substrings of it: a handful of
// allocations however many hosts were rejected.
func (p *placer) explain(hs []Host, rejs []reject) []Rejection {
	if len(rejs) == 0 {
		return nil
	}
	out := make([]Rejection, len(rejs))
	var same [numReasons]string // per-request reasons, made on first use
	var b strings.Builder
	var num [20]byte
	n := 0
	for _, r := range rejs {
		switch r.why {
		case rNotUp, rFeatures, rMemory, rCPU, rCPUCount:
			n++
		}
	}
	b.Grow(32 * n) // "12345 MiB free, needs 4096 MiB" and the like
	for i, r := range rejs {
		h := &hs[r.idx]
		out[i].Host = h.Name
		start := b.Len()
		switch r.why {
		case rNotUp:
			b.WriteString("not up (state ")
			b.WriteString(strconv.Quote(h.State))
			b.WriteString(")")
		case rFeatures:
			b.WriteString("CPU lacks feature(s) ")
			n := 0
			for _, f := range p.features {
				if !slices.Contains(h.CPUFeatures, f) {
					if n > 0 {
						b.WriteString(", ")
					}
					b.WriteString(f)
					n++
				}
			}
		case rMemory:
			b.Write(strconv.AppendInt(num[:0], max(r.free, 0), 10))
			b.WriteString(" MiB free, needs ")
			b.Write(strconv.AppendInt(num[:0], p.req.MemoryMiB, 10))
			b.WriteString(" MiB")
		case rCPU:
			b.Write(strconv.AppendInt(num[:0], max(r.free, 0), 10))
			b.WriteString(" vCPUs free, needs ")
			b.Write(strconv.AppendInt(num[:0], int64(p.req.CPUs), 10))
		case rCPUCount:
			b.WriteString("has ")
			b.Write(strconv.AppendInt(num[:0], int64(h.CPUs), 10))
			b.WriteString(" CPUs, needs ")
			b.Write(strconv.AppendInt(num[:0], int64(p.req.CPUs), 10))
		default:
			if same[r.why] == "" {
				same[r.why] = p.reason(r.why)
			}
			out[i].Reason = same[r.why]
			continue
		}
		out[i].Reason = b.String()[start:] // shares b's bytes, which are never overwritten
	}
	return out
}

// reason is the text of a reason that does not depend on the host.
func (p *placer) reason(why reason) string {
	switch why {
	case rExcluded:
		return reasonExcluded
	case rDown:
		return reasonDown
	case rMaintenance:
		return reasonMaintenance
	case rNetwork:
		return fmt.Sprintf("no network %q", p.req.Network)
	case rPool:
		return fmt.Sprintf("no pool %q", p.req.Pool)
	case rAntiAffinity:
		return fmt.Sprintf("already runs a VM of group %q", p.req.AntiAffinity)
	}
	return "rejected"
}

// noFit is the message of the error when no host fits: each host and why,
// in name order, the hosts past maxListed counted by reason.
func (p *placer) noFit(out []Rejection, rejs []reject) string {
	var b strings.Builder
	fmt.Fprintf(&b, "no host fits vm %q: ", p.req.Name)
	for i, r := range out[:min(len(out), maxListed)] {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(r.Host)
		b.WriteString(": ")
		b.WriteString(r.Reason)
	}
	if len(out) <= maxListed {
		return b.String()
	}
	var counts [numReasons]int
	for _, r := range rejs[maxListed:] {
		counts[r.why]++
	}
	fmt.Fprintf(&b, "; and %d more hosts (", len(out)-maxListed)
	n := 0
	for why, c := range counts {
		if c == 0 {
			continue
		}
		if n > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%d %s", c, p.summary(reason(why)))
		n++
	}
	b.WriteString(")")
	return b.String()
}

// summary names a reason for a count of hosts: "3 down", "5 short of memory".
func (p *placer) summary(why reason) string {
	switch why {
	case rExcluded:
		return reasonExcluded
	case rDown:
		return reasonDown
	case rMaintenance:
		return reasonMaintenance
	case rNotUp:
		return "not up"
	case rNetwork:
		return fmt.Sprintf("without network %q", p.req.Network)
	case rPool:
		return fmt.Sprintf("without pool %q", p.req.Pool)
	case rFeatures:
		return "lacking CPU features"
	case rAntiAffinity:
		return fmt.Sprintf("already running group %q", p.req.AntiAffinity)
	case rMemory:
		return "short of memory"
	case rCPU:
		return "short of vCPUs"
	case rCPUCount:
		return "with too few CPUs"
	}
	return "rejected"
}
