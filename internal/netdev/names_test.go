package netdev

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
)

func TestTapName(t *testing.T) {
	valid := regexp.MustCompile(`^sh[0-9a-f]{10}$`)
	ids := []string{"", "vm1", "vm2", "0f8e7c1a-2b3c-4d5e-8f90-123456789abc", strings.Repeat("x", 300), "name with spaces/and:colons", "ü"}
	seen := map[string]string{}
	for _, id := range ids {
		n := TapName(id)
		if !valid.MatchString(n) {
			t.Errorf("TapName(%q) = %q, want sh + 10 hex", id, n)
		}
		if err := ValidateName(n); err != nil {
			t.Errorf("TapName(%q) = %q is not a valid interface name: %v", id, n, err)
		}
		if TapName(id) != n {
			t.Errorf("TapName(%q) is not stable", id)
		}
		if prev, ok := seen[n]; ok {
			t.Errorf("TapName(%q) == TapName(%q) == %q", id, prev, n)
		}
		seen[n] = id
	}
	// Pin one value so an accidental change of the derivation (which
	// would rename the taps of running VMs across an upgrade) shows up.
	if got, want := TapName("vm1"), "sh1f03482a62"; got != want {
		t.Errorf("TapName(vm1) = %q, want %q", got, want)
	}
}

func TestTapNameNoCollisionsSmallSet(t *testing.T) {
	seen := map[string]bool{}
	for i := range 10000 {
		n := TapName(fmt.Sprintf("vm-%d", i))
		if seen[n] {
			t.Fatalf("collision at vm-%d: %s", i, n)
		}
		seen[n] = true
	}
}

func TestMAC(t *testing.T) {
	valid := regexp.MustCompile(`^52:54:00:[0-9a-f]{2}:[0-9a-f]{2}:[0-9a-f]{2}$`)
	seeds := []string{"", "vm1", "vm2", "vm1/nic0", "vm1/nic1"}
	seen := map[string]string{}
	for _, s := range seeds {
		m := MAC(s)
		if !valid.MatchString(m) {
			t.Errorf("MAC(%q) = %q, want 52:54:00:xx:xx:xx in lower case", s, m)
		}
		if MAC(s) != m {
			t.Errorf("MAC(%q) not stable", s)
		}
		if prev, ok := seen[m]; ok {
			t.Errorf("MAC(%q) == MAC(%q) == %s", s, prev, m)
		}
		seen[m] = s
	}
	// Pinned: a changed derivation would change the MAC of existing VMs.
	if got, want := MAC("vm1"), "52:54:00:a3:09:16"; got != want {
		t.Errorf("MAC(vm1) = %q, want %q", got, want)
	}
	// First octet 0x52: locally administered (bit 1 set), unicast (bit 0 clear).
	if b := 0x52; b&0x02 == 0 || b&0x01 != 0 {
		t.Fatal("0x52 is not a locally administered unicast octet")
	}
}

func TestValidateName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"br0", true},
		{"shoal0", true},
		{"sh0123456789", true},
		{"a23456789012345", true},
		{"a234567890123456", false},
		{"", false},
		{".", false},
		{"..", false},
		{"a/b", false},
		{"a:b", false},
		{"a b", false},
		{"a\tb", false},
	}
	for _, tt := range tests {
		err := ValidateName(tt.name)
		if (err == nil) != tt.ok {
			t.Errorf("ValidateName(%q) = %v, want ok=%v", tt.name, err, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidateName(%q) error does not wrap ErrInvalidName", tt.name)
		}
	}
}
