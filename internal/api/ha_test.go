package api_test

import (
	"errors"
	"testing"

	"github.com/shoalvm/shoal/internal/api"
)

func TestPriorities(t *testing.T) {
	for _, tc := range []struct {
		in        string
		valid     bool
		rank      int
		effective string // with HA on
	}{
		{"high", true, 3, "high"},
		{"medium", true, 2, "medium"},
		{"", true, 2, "medium"},
		{"low", true, 1, "low"},
		{"High", false, 2, "High"},
		{"urgent", false, 2, "urgent"},
	} {
		err := api.ValidatePriority(tc.in)
		if tc.valid != (err == nil) {
			t.Errorf("ValidatePriority(%q) = %v, want valid %v", tc.in, err, tc.valid)
		}
		if err != nil && (!errors.Is(err, api.ErrInvalid) || err.Error() != `priority "`+tc.in+`" is invalid: use high, medium or low`) {
			t.Errorf("ValidatePriority(%q) = %v, want an ErrInvalid listing the valid ones", tc.in, err)
		}
		if got := api.PriorityRank(tc.in); got != tc.rank {
			t.Errorf("PriorityRank(%q) = %d, want %d", tc.in, got, tc.rank)
		}
		if got := api.EffectivePriority(true, tc.in); got != tc.effective {
			t.Errorf("EffectivePriority(true, %q) = %q, want %q", tc.in, got, tc.effective)
		}
		if got := api.EffectivePriority(false, tc.in); got != "" {
			t.Errorf("EffectivePriority(false, %q) = %q, want none", tc.in, got)
		}
	}
	vm := api.MergeVM(api.VMSpec{Name: "a", HA: true}, nil)
	if vm.Priority != api.PriorityMedium {
		t.Errorf("HA VM without priority shows %q, want medium", vm.Priority)
	}
}
