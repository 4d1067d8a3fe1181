// Package cpumodel chooses the virtual CPU model of VMs: the most capable
// named QEMU model that every host of the cluster can run, so that a VM can
// later move to any host without losing a CPU feature. Pure.
package cpumodel

import "slices"

// Model is a named QEMU CPU model and the host CPU flags it needs.
type Model struct {
	Name  string
	Flags []string
}

// Ladder lists the models from the least to the most capable; each needs
// the flags of the ones before it.
var Ladder = []Model{
	{"qemu64", nil},
	{"Nehalem", []string{"sse4_1", "sse4_2", "ssse3", "popcnt", "cx16"}},
	{"Westmere", []string{"aes", "pclmulqdq"}},
	{"SandyBridge", []string{"avx", "xsave", "tsc_deadline_timer", "x2apic"}},
	{"Haswell-noTSX", []string{"avx2", "bmi1", "bmi2", "fma", "movbe", "f16c", "fsgsbase", "rdrand", "invpcid", "pcid"}},
}

// Host means the host's own CPU: fastest, but it ties the VM to hosts
// with the same CPU.
const Host = "host"

// TCGFlags are the flags a host without KVM offers guests: software
// emulation runs the Nehalem model without missing features.
func TCGFlags() []string { return slices.Clone(needs(1)) }

// needs returns every flag model i requires.
func needs(i int) []string {
	var out []string
	for _, m := range Ladder[:i+1] {
		out = append(out, m.Flags...)
	}
	return out
}

// Choose returns the most capable model of the ladder whose flags every
// one of the hosts' flag sets has. No hosts: the baseline model.
func Choose(hosts [][]string) string {
	best := Ladder[0].Name
	if len(hosts) == 0 {
		return best
	}
	for i := range Ladder {
		for _, h := range hosts {
			for _, f := range needs(i) {
				if !slices.Contains(h, f) {
					return best
				}
			}
		}
		best = Ladder[i].Name
	}
	return best
}

// Names lists the models Shoal offers, for messages.
func Names() string {
	out := Host
	for _, m := range Ladder {
		out += ", " + m.Name
	}
	return out
}

// Valid reports whether name is a model Shoal offers.
func Valid(name string) bool {
	if name == Host {
		return true
	}
	for _, m := range Ladder {
		if m.Name == name {
			return true
		}
	}
	return false
}
