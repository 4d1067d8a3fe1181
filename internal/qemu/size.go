package qemu

import (
	"context"
	"fmt"
)

// Size is how many vCPUs and how much memory a running guest has.
type Size struct {
	CPUs      int
	MemoryMiB int64
}

// Size asks QEMU the guest's size (query-cpus-fast, and the base memory
// of query-memory-size-summary, in whole MiB: a TCG guest's pad, see
// tcgMemoryPadKiB, is not counted).
func (p *Process) Size(ctx context.Context) (Size, error) {
	var cpus []struct {
		Index int `json:"cpu-index"`
	}
	if err := p.qmp.Execute(ctx, "query-cpus-fast", nil, &cpus); err != nil {
		return Size{}, fmt.Errorf("qemu %s: vCPUs: %w", p.Dir, err)
	}
	var mem struct {
		Base int64 `json:"base-memory"`
	}
	if err := p.qmp.Execute(ctx, "query-memory-size-summary", nil, &mem); err != nil {
		return Size{}, fmt.Errorf("qemu %s: memory size: %w", p.Dir, err)
	}
	return Size{CPUs: len(cpus), MemoryMiB: mem.Base >> 20}, nil
}
