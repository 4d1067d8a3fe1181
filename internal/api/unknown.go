package api

// MarkUnknown sets a VM whose host's lease is gone to StateUnknown: no one
// can tell whether it still runs. A VM that is off stays as it is. Pure.
func MarkUnknown(v *VM, hostAlive bool) {
	if hostAlive || v.Host == "" {
		return
	}
	switch v.State {
	case StateStopped, StateCreating, StateDeleting, StateFailed:
		return
	}
	v.State = StateUnknown
	if v.HA {
		v.Error = "host " + v.Host + " is not answering: as an HA VM it restarts on another host once that host is fenced"
	} else {
		v.Error = "host " + v.Host + " is not answering: what became of the VM is unknown until the host is back"
	}
}
