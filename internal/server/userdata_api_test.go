package server

import (
	"strings"
	"testing"

	"github.com/shoalvm/shoal/internal/api"
)

// TestAPIUserDataBound: a VM's cloud-init user data, kept in etcd with
// the VM, is at most 64 KiB; more is a clear 400 that records nothing.
func TestAPIUserDataBound(t *testing.T) {
	t.Parallel()
	h := newAPIHarness(t)
	big := api.CreateVMRequest{Name: "web1", Image: "tiny", UserData: "#cloud-config\n" + strings.Repeat("#", api.MaxUserData)}
	h.call("POST", "/v1/vms?wait=false", big).wantError(t, 400, "invalid", "user data of 65550 bytes is too large: at most 65536 (64 KiB)")
	if n := h.vmCount(); n != 0 {
		t.Fatalf("%d VMs after a refused create", n)
	}
	big.UserData = big.UserData[:api.MaxUserData]
	h.call("POST", "/v1/vms?wait=false", big).decodeOK(t, 201, &api.VM{})
	if sp := h.spec("web1"); len(sp.UserData) != api.MaxUserData {
		t.Fatalf("user data of %d bytes stored as %d", api.MaxUserData, len(sp.UserData))
	}
}
