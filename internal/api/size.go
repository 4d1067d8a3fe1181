package api

// RunSize is the size (vCPUs, MiB) the VM of spec s runs at once the
// migration is in: the migration's, or else the spec's.
func (s VMSpec) RunSize() (int, int64) {
	if m := s.Migration; m != nil && m.CPUs > 0 && m.MemoryMiB > 0 {
		return m.CPUs, m.MemoryMiB
	}
	return s.CPUs, s.MemoryMiB
}

// HeldSize is the room (vCPUs, MiB) the VM of spec s holds on its host
// (and on the target of its migration) while it is not stopped: the
// size set, which it takes at its next start, or the size it runs at
// if that is larger (see StartedCPUs and Migration).
func (s VMSpec) HeldSize() (int, int64) {
	if s.Power == PowerStopped && s.Migration == nil {
		return s.CPUs, s.MemoryMiB // what its start is checked for
	}
	cpus, mem := s.RunSize()
	return max(cpus, s.CPUs, s.StartedCPUs), max(mem, s.MemoryMiB, s.StartedMemoryMiB)
}

// Resize sets the VM's size to cpus, mem (for its next start). For a VM
// that is not stopped, it keeps the size it was started with
// (StartedCPUs, StartedMemoryMiB) while that differs from the size set.
func (s *VMSpec) Resize(cpus int, mem int64) {
	if s.Power == PowerStopped {
		s.StartedCPUs, s.StartedMemoryMiB = 0, 0
	} else if s.StartedCPUs == 0 {
		s.StartedCPUs, s.StartedMemoryMiB = s.CPUs, s.MemoryMiB
	}
	s.CPUs, s.MemoryMiB = cpus, mem
	if s.StartedCPUs == cpus && s.StartedMemoryMiB == mem {
		s.StartedCPUs, s.StartedMemoryMiB = 0, 0
	}
}
