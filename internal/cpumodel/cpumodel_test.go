package cpumodel

import "testing"

func TestChoose(t *testing.T) {
	haswell := needs(len(Ladder) - 1)
	tests := []struct {
		name  string
		hosts [][]string
		want  string
	}{
		{"no hosts", nil, "qemu64"},
		{"one modern host", [][]string{haswell}, "Haswell-noTSX"},
		{"a TCG host pulls everyone down", [][]string{haswell, TCGFlags()}, "Nehalem"},
		{"an old host", [][]string{haswell, {"sse4_1", "sse4_2", "ssse3", "popcnt", "cx16", "aes", "pclmulqdq"}}, "Westmere"},
		{"a host without flags", [][]string{haswell, {}}, "qemu64"},
		{"only TCG hosts", [][]string{TCGFlags(), TCGFlags()}, "Nehalem"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := Choose(tc.hosts); got != tc.want {
				t.Errorf("Choose = %q, want %q", got, tc.want)
			}
		})
	}
	if !Valid("host") || !Valid("Nehalem") || Valid("Pentium") {
		t.Error("Valid")
	}
}
