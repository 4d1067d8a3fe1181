package api

import (
	"fmt"
	"strings"
	"time"
)

// DefaultProject holds every VM created without a project, and those
// made before projects existed (their spec names none). It always
// exists and has no limits.
const DefaultProject = "default"

// ProjectOf returns the project a VM of spec project p belongs to.
func ProjectOf(p string) string {
	if p == "" {
		return DefaultProject
	}
	return p
}

// Usage is what the VMs of a project take (or what one VM adds).
type Usage struct {
	VMs       int   `json:"vms"`
	CPUs      int   `json:"cpus"`
	MemoryMiB int64 `json:"memory_mib"`
	DiskBytes int64 `json:"disk_bytes"`
}

// Add returns u plus o.
func (u Usage) Add(o Usage) Usage {
	return Usage{VMs: u.VMs + o.VMs, CPUs: u.CPUs + o.CPUs, MemoryMiB: u.MemoryMiB + o.MemoryMiB, DiskBytes: u.DiskBytes + o.DiskBytes}
}

// Sub returns u minus o, never below zero.
func (u Usage) Sub(o Usage) Usage {
	return Usage{VMs: max(u.VMs-o.VMs, 0), CPUs: max(u.CPUs-o.CPUs, 0), MemoryMiB: max(u.MemoryMiB-o.MemoryMiB, 0), DiskBytes: max(u.DiskBytes-o.DiskBytes, 0)}
}

// UsageOf is what one VM takes of its project's quota.
func UsageOf(v VMSpec) Usage {
	return Usage{VMs: 1, CPUs: v.CPUs, MemoryMiB: v.MemoryMiB, DiskBytes: v.DiskBytes}
}

// Limits are a project's quotas; 0 is unlimited.
type Limits struct {
	VMs       int   `json:"max_vms,omitempty"`
	CPUs      int   `json:"max_cpus,omitempty"`
	MemoryMiB int64 `json:"max_memory_mib,omitempty"`
	DiskBytes int64 `json:"max_disk_bytes,omitempty"`
}

// Admit says whether a project of limits l that uses u may take add
// more: nil, or an ErrConflict error that names the first limit it would
// pass, in one line. It is pure.
func (l Limits) Admit(project string, u, add Usage) error {
	n := u.Add(add)
	var over string
	switch {
	case l.VMs > 0 && n.VMs > l.VMs:
		over = fmt.Sprintf("max-vms %d (%d used)", l.VMs, u.VMs)
	case l.CPUs > 0 && n.CPUs > l.CPUs:
		over = fmt.Sprintf("max-cpus %d (%d used, %d asked)", l.CPUs, u.CPUs, add.CPUs)
	case l.MemoryMiB > 0 && n.MemoryMiB > l.MemoryMiB:
		over = fmt.Sprintf("max-memory %s (%s used, %s asked)", FormatSize(l.MemoryMiB<<20), FormatSize(u.MemoryMiB<<20), FormatSize(add.MemoryMiB<<20))
	case l.DiskBytes > 0 && n.DiskBytes > l.DiskBytes:
		over = fmt.Sprintf("max-disk %s (%s used, %s asked)", FormatSize(l.DiskBytes), FormatSize(u.DiskBytes), FormatSize(add.DiskBytes))
	default:
		return nil
	}
	return Errorf(ErrConflict, "project %q is at its quota: %s", project, over)
}

// Project is a group of VMs with quotas (GET /v1/projects/{name}).
type Project struct {
	Name      string    `json:"name"`
	Limits    Limits    `json:"limits"`
	Usage     Usage     `json:"usage"` // what its VMs take now
	CreatedAt time.Time `json:"created_at,omitzero"`
}

// CreateProjectRequest is the body of POST /v1/projects. Sizes are as
// for a VM ("16G"); absent or 0 is unlimited.
type CreateProjectRequest struct {
	Name      string `json:"name"`
	MaxVMs    int    `json:"max_vms,omitempty"`
	MaxCPUs   int    `json:"max_cpus,omitempty"`
	MaxMemory string `json:"max_memory,omitempty"`
	MaxDisk   string `json:"max_disk,omitempty"`
}

// ParseLimits validates a create request's limits.
func (r CreateProjectRequest) ParseLimits() (Limits, error) {
	l := Limits{VMs: r.MaxVMs, CPUs: r.MaxCPUs}
	if l.VMs < 0 || l.CPUs < 0 {
		return l, Errorf(ErrInvalid, "max-vms and max-cpus must be 0 (unlimited) or more")
	}
	size := func(flag, s string) (int64, error) {
		if s == "" || s == "0" {
			return 0, nil
		}
		b, err := ParseSize(s)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", flag, err)
		}
		return b, nil
	}
	mem, err := size("max-memory", r.MaxMemory)
	if err != nil {
		return l, err
	}
	if mem%(1<<20) != 0 {
		return l, Errorf(ErrInvalid, "max-memory %s is not whole MiB", strings.TrimSpace(r.MaxMemory))
	}
	l.MemoryMiB = mem >> 20
	l.DiskBytes, err = size("max-disk", r.MaxDisk)
	return l, err
}
