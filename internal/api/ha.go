package api

// Failover priorities of highly available VMs: after a host fails, its HA
// VMs restart elsewhere in this order. An HA VM with no priority counts as
// medium.
const (
	PriorityHigh   = "high"
	PriorityMedium = "medium"
	PriorityLow    = "low"
)

// UpdateVMRequest is the body of PATCH /v1/vms/{name}: the settings to
// change; nil leaves one as it is. HA false also clears the priority;
// AntiAffinity "" takes the VM out of its group. A new size (CPUs,
// Memory as on create, e.g. "512M") is what the VM starts with from its
// next start: a running VM goes on with the size it runs at.
type UpdateVMRequest struct {
	HA           *bool   `json:"ha,omitempty"`
	Priority     *string `json:"priority,omitempty"`
	AntiAffinity *string `json:"anti_affinity,omitempty"`
	CPUs         *int    `json:"cpus,omitempty"`
	Memory       *string `json:"memory,omitempty"`
}

// RecoverRequest is the body of POST /v1/vms/{name}/recover: restart a
// VM whose host is dead (and fenced) on another host.
type RecoverRequest struct {
	To string `json:"to,omitempty"` // "" = the scheduler picks
	// Force: the user vouches that the VM's host is off. Needed for a VM
	// that is not HA, which its host does not kill when cut off.
	Force bool `json:"force,omitempty"`
}

// ValidatePriority checks a failover priority: high, medium, low, or ""
// (the default, medium).
func ValidatePriority(p string) error {
	switch p {
	case "", PriorityHigh, PriorityMedium, PriorityLow:
		return nil
	}
	return Errorf(ErrInvalid, "priority %q is invalid: use high, medium or low", p)
}

// PriorityRank orders priorities for failover, higher first: high 3,
// medium (or "") 2, low 1. Anything else, which validation never lets
// into a spec, ranks as medium.
func PriorityRank(p string) int {
	switch p {
	case PriorityHigh:
		return 3
	case PriorityLow:
		return 1
	}
	return 2
}

// EffectivePriority is the failover priority of a VM as users see it: ""
// when it is not highly available, else its priority or the default
// (medium).
func EffectivePriority(ha bool, p string) string {
	switch {
	case !ha:
		return ""
	case p == "":
		return PriorityMedium
	}
	return p
}
