package api

import (
	"errors"
	"strings"
	"testing"
)

func TestAdmit(t *testing.T) {
	l := Limits{VMs: 5, CPUs: 8, MemoryMiB: 1024, DiskBytes: 10 << 30}
	one := Usage{VMs: 1, CPUs: 2, MemoryMiB: 256, DiskBytes: 1 << 30}
	tests := []struct {
		l    Limits
		used Usage
		want string // "" = admitted
	}{
		{l, Usage{}, ""},
		{l, Usage{VMs: 4, CPUs: 6, MemoryMiB: 768, DiskBytes: 9 << 30}, ""}, // exactly at every limit after
		{l, Usage{VMs: 5}, `project "dev" is at its quota: max-vms 5 (5 used)`},
		{l, Usage{CPUs: 7}, "max-cpus 8 (7 used, 2 asked)"},
		{l, Usage{MemoryMiB: 800}, "max-memory 1G (800M used, 256M asked)"},
		{l, Usage{DiskBytes: 9<<30 + 1}, "max-disk 10G"},
		{Limits{}, Usage{VMs: 1 << 20, CPUs: 1 << 20, MemoryMiB: 1 << 40, DiskBytes: 1 << 60}, ""}, // 0: unlimited
	}
	for _, tc := range tests {
		err := tc.l.Admit("dev", tc.used, one)
		if tc.want == "" && err != nil || tc.want != "" && (!errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("Admit(%+v, %+v) = %v, want %q", tc.l, tc.used, err, tc.want)
		}
	}
	if got := (Usage{VMs: 1, CPUs: 1}).Sub(one); got != (Usage{}) {
		t.Errorf("Sub goes below zero: %+v", got)
	}
}

func TestParseLimits(t *testing.T) {
	l, err := CreateProjectRequest{Name: "dev", MaxVMs: 10, MaxCPUs: 16, MaxMemory: "16G", MaxDisk: "200G"}.ParseLimits()
	if err != nil || l != (Limits{VMs: 10, CPUs: 16, MemoryMiB: 16 << 10, DiskBytes: 200 << 30}) {
		t.Errorf("ParseLimits = %+v, %v", l, err)
	}
	if l, err := (CreateProjectRequest{MaxMemory: "0"}).ParseLimits(); err != nil || l != (Limits{}) {
		t.Errorf("no limits: %+v, %v", l, err)
	}
	for _, bad := range []CreateProjectRequest{{MaxVMs: -1}, {MaxCPUs: -2}, {MaxMemory: "1.5K"}, {MaxDisk: "lots"}, {MaxMemory: "-1G"}} {
		if _, err := bad.ParseLimits(); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseLimits(%+v) = %v, want invalid", bad, err)
		}
	}
}
