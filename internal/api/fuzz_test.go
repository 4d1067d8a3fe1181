package api

import (
	"errors"
	"testing"
)

// FuzzParseSize: no text makes ParseSize panic, accept a size out of
// range, or fail without an invalid-input error.
func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"256M", "1.5G", "512MiB", "1", "0", "-1G", "1e300T", "NaN", ".", "9999999999999999999", " 2 g "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSize(s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParseSize(%q): %v is not an invalid-input error", s, err)
			}
			return
		}
		if n < 1 || n > 1<<60 {
			t.Fatalf("ParseSize(%q) = %d, out of range", s, n)
		}
	})
}

// FuzzValidateName: a name ValidateName accepts is safe in a path, an
// etcd key and a Linux interface name's suffix.
func FuzzValidateName(f *testing.F) {
	for _, s := range []string{"web1", "a", "-x", "x-", "Web", "a/b", "a..b", "ä", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if err := ValidateName("vm", s); err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("ValidateName(%q): %v is not an invalid-input error", s, err)
			}
			return
		}
		if len(s) == 0 || len(s) > 63 {
			t.Fatalf("ValidateName accepted %q", s)
		}
		for _, c := range []byte(s) {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				t.Fatalf("ValidateName accepted %q", s)
			}
		}
	})
}
