package api

import (
	"fmt"
	"strconv"
	"strings"
)

// ValidateName checks a resource name against DNS label rules: 1-63
// characters of lower-case letters, digits and '-', starting with a letter
// and not ending with '-'.
func ValidateName(kind, name string) error {
	switch {
	case name == "":
		return Errorf(ErrInvalid, "%s name is required", kind)
	case len(name) > 63:
		return Errorf(ErrInvalid, "%s name %q is too long: at most 63 characters", kind, name)
	case name[0] < 'a' || name[0] > 'z':
		return Errorf(ErrInvalid, "%s name %q must start with a lower-case letter", kind, name)
	case name[len(name)-1] == '-':
		return Errorf(ErrInvalid, "%s name %q must not end with '-'", kind, name)
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return Errorf(ErrInvalid, "%s name %q may hold only a-z, 0-9 and '-'", kind, name)
		}
	}
	return nil
}

// ParseSize parses a size such as "256M", "1G", "1.5G", "512MiB" or a plain
// number of bytes. Units are binary (K=1024). Zero and negative sizes are
// rejected.
func ParseSize(s string) (int64, error) {
	in := strings.TrimSpace(s)
	if in == "" {
		return 0, Errorf(ErrInvalid, "size is empty: use a number with a unit, e.g. 256M or 2G")
	}
	num := strings.TrimRightFunc(in, func(r rune) bool { return r < '0' || r > '9' && r != '.' })
	unit := strings.ToUpper(strings.TrimSpace(in[len(num):]))
	unit = strings.TrimSuffix(strings.TrimSuffix(unit, "B"), "I")
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || num == "" {
		return 0, Errorf(ErrInvalid, "size %q is not a number with a unit, e.g. 256M or 2G", s)
	}
	mult := map[string]float64{"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[unit]
	if mult == 0 {
		return 0, Errorf(ErrInvalid, "size %q has an unknown unit: use K, M, G or T", s)
	}
	b := v * mult
	if b < 1 {
		return 0, Errorf(ErrInvalid, "size %q must be greater than zero", s)
	}
	if b > 1<<60 {
		return 0, Errorf(ErrInvalid, "size %q is too large", s)
	}
	return int64(b), nil
}

// FormatSize renders bytes exactly, in the largest binary unit that
// shows them with at most one decimal, e.g. 268435456 -> "256M",
// 1610612736 -> "1.5G", 1025 -> "1025".
func FormatSize(b int64) string {
	units := []string{"T", "G", "M", "K"}
	for i, u := range units {
		size := int64(1) << (10 * (len(units) - i))
		rem := b % size
		switch {
		case b < size:
			continue
		case rem == 0:
			return fmt.Sprintf("%d%s", b/size, u)
		case rem*10%size == 0:
			return fmt.Sprintf("%d.%d%s", b/size, rem*10/size, u)
		}
	}
	return fmt.Sprint(b)
}
