package api_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/shoalvm/shoal/internal/api"
)

func TestValidateName(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		wantMsg string // "" means valid; else a substring of the message
	}{
		{"simple", "web1", ""},
		{"single letter", "a", ""},
		{"inner dashes", "a-b--c", ""},
		{"letters and digits", "db2-replica9", ""},
		{"63 characters", "a" + strings.Repeat("b", 62), ""},
		{"empty", "", "vm name is required"},
		{"64 characters", "a" + strings.Repeat("b", 63), "too long: at most 63 characters"},
		{"leading digit", "1web", "must start with a lower-case letter"},
		{"only digits", "123", "must start with a lower-case letter"},
		{"leading dash", "-web", "must start with a lower-case letter"},
		{"trailing dash", "web-", "must not end with '-'"},
		{"single dash", "-", "must start with a lower-case letter"},
		{"leading upper-case", "Web", "must start with a lower-case letter"},
		{"inner upper-case", "wEb", "may hold only a-z, 0-9 and '-'"},
		{"underscore", "web_1", "may hold only a-z, 0-9 and '-'"},
		{"dot", "web.example", "may hold only a-z, 0-9 and '-'"},
		{"space", "web 1", "may hold only a-z, 0-9 and '-'"},
		{"slash", "web/1", "may hold only a-z, 0-9 and '-'"},
		{"unicode inside", "café", "may hold only a-z, 0-9 and '-'"},
		{"unicode first", "école", "must start with a lower-case letter"},
		{"fullwidth letter", "ａbc", "must start with a lower-case letter"},
		{"NUL byte", "web\x00", "may hold only a-z, 0-9 and '-'"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := api.ValidateName("vm", tc.in)
			if tc.wantMsg == "" {
				if err != nil {
					t.Fatalf("ValidateName(%q) = %v, want nil", tc.in, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("ValidateName(%q) = nil, want an error containing %q", tc.in, tc.wantMsg)
			}
			if !errors.Is(err, api.ErrInvalid) {
				t.Errorf("ValidateName(%q) error %v is not ErrInvalid", tc.in, err)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("ValidateName(%q) = %q, want it to contain %q", tc.in, err, tc.wantMsg)
			}
			if code, _ := api.HTTPStatus(err); code != 400 {
				t.Errorf("ValidateName(%q) maps to HTTP %d, want 400", tc.in, code)
			}
		})
	}
}

func TestValidateNameUsesKind(t *testing.T) {
	err := api.ValidateName("image", "")
	if err == nil || err.Error() != "image name is required" {
		t.Fatalf("got %v, want %q", err, "image name is required")
	}
	err = api.ValidateName("network", "Bad")
	if err == nil || !strings.HasPrefix(err.Error(), `network name "Bad"`) {
		t.Fatalf("got %v, want the kind and the quoted name first", err)
	}
}

func TestParseSize(t *testing.T) {
	const (
		K = int64(1) << 10
		M = int64(1) << 20
		G = int64(1) << 30
		T = int64(1) << 40
	)
	ok := []struct {
		in   string
		want int64
	}{
		{"256M", 256 * M},
		{"1G", G},
		{"1.5G", G + G/2},
		{"512MiB", 512 * M},
		{"512mib", 512 * M},
		{"2gb", 2 * G},
		{"2GB", 2 * G},
		{"4k", 4 * K},
		{"3T", 3 * T},
		{"1024", 1024},
		{"1", 1},
		{"7B", 7},
		{" 256M ", 256 * M},
		{"256 M", 256 * M},
		{"0.5K", 512},
		{".5K", 512},
		{"+2M", 2 * M},
		{"1048576T", 1 << 60}, // the largest accepted size
		// ParseFloat accepts exponents, so this is 1000 MiB. Documented
		// here so that a change of mind is a conscious one.
		{"1e3M", 1000 * M},
	}
	for _, tc := range ok {
		got, err := api.ParseSize(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d, nil", tc.in, got, err, tc.want)
		}
	}

	bad := []struct {
		in      string
		wantMsg string
	}{
		{"", "size is empty"},
		{"   ", "size is empty"},
		{"0", "must be greater than zero"},
		{"0M", "must be greater than zero"},
		{"-1", "must be greater than zero"},
		{"-5G", "must be greater than zero"},
		{"0.1", "must be greater than zero"},
		{"12Q", "unknown unit"},
		{"1P", "unknown unit"},
		{"1MM", "unknown unit"},
		{"lots", "is not a number"},
		{"G", "is not a number"},
		{"M256", "is not a number"},
		{"1.2.3M", "is not a number"},
		{"1048577T", "too large"},
		{"9223372036854775807", "too large"},
		{"99999999999999999999G", "too large"},
		{"1e400", "is not a number"}, // overflows float64: ParseFloat reports a range error
	}
	for _, tc := range bad {
		got, err := api.ParseSize(tc.in)
		if err == nil {
			t.Errorf("ParseSize(%q) = %d, nil; want an error containing %q", tc.in, got, tc.wantMsg)
			continue
		}
		if !errors.Is(err, api.ErrInvalid) {
			t.Errorf("ParseSize(%q) error %v is not ErrInvalid", tc.in, err)
		}
		if !strings.Contains(err.Error(), tc.wantMsg) {
			t.Errorf("ParseSize(%q) = %q, want it to contain %q", tc.in, err, tc.wantMsg)
		}
		if tc.in != "" && strings.TrimSpace(tc.in) != "" && !strings.Contains(err.Error(), `"`+tc.in+`"`) {
			t.Errorf("ParseSize(%q) = %q, want the message to quote the input", tc.in, err)
		}
	}
}

func TestFormatSize(t *testing.T) {
	tests := []struct {
		in   int64
		want string
	}{
		{0, "0"},
		{1, "1"},
		{1023, "1023"},
		{1024, "1K"},
		{1536, "1.5K"},
		{64 << 20, "64M"},
		{268435456, "256M"},
		{1 << 30, "1G"},
		{3 << 29, "1.5G"},
		{5 << 40, "5T"},
		{1 << 50, "1024T"}, // T is the largest unit
	}
	for _, tc := range tests {
		if got := api.FormatSize(tc.in); got != tc.want {
			t.Errorf("FormatSize(%d) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// What FormatSize prints for a size that is a whole number of a unit (or a
// half of one) must parse back to the same size.
func TestFormatSizeRoundTrip(t *testing.T) {
	for _, b := range []int64{1, 512, 1024, 1536, 32 << 20, 256 << 20, 3 << 29, 2 << 30, 64 << 40} {
		s := api.FormatSize(b)
		got, err := api.ParseSize(s)
		if err != nil || got != b {
			t.Errorf("ParseSize(FormatSize(%d) = %q) = %d, %v", b, s, got, err)
		}
	}
}

// FormatSize promises "the largest binary unit that keeps it exact to one
// decimal"; sizes that no unit renders exactly must not be rounded.
func TestFormatSizeNeverRounds(t *testing.T) {
	tests := []struct {
		in   int64
		want string
	}{
		{1025, "1025"},
		{1100, "1100"},
		{1048575, "1048575"},
		{1<<30 + 1<<20, "1025M"},
		{64<<20 + 1, "67108865"},
	}
	for _, tc := range tests {
		if got := api.FormatSize(tc.in); got != tc.want {
			t.Errorf("FormatSize(%d) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
