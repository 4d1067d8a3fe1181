package server

import (
	"context"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/client"
)

// clientFor serves the harness's server on a unix socket and returns a
// client with token, as the CLI makes one.
func (h *apiHarness) clientFor(token string) *client.Client {
	h.t.Helper()
	sock := filepath.Join(h.t.TempDir(), "api.sock")
	l, err := net.Listen("unix", sock)
	must(h.t, err)
	hs := &http.Server{Handler: h.srv}
	go func() { _ = hs.Serve(l) }()
	h.t.Cleanup(func() { _ = hs.Close() })
	c, err := client.New("unix://"+sock, token, nil)
	must(h.t, err)
	return c
}

// wantRefused checks a call failed with the given kind and a one-line
// message holding every one of parts.
func wantRefused(t *testing.T, what string, err error, kind error, parts ...string) {
	t.Helper()
	if !errors.Is(err, kind) {
		t.Errorf("%s: %v, want %v", what, err, kind)
		return
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("%s: %q does not say %q", what, err, p)
		}
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("%s: message of more than one line: %q", what, err)
	}
}

// TestViewerTokenThroughTheClient is the check: a viewer's token
// lists VMs and is refused (403, one clear line) to create, stop, open a
// console or migrate; a revoked or expired token gets 401.
func TestViewerTokenThroughTheClient(t *testing.T) {
	h, tokens := newAuthHarness(t)
	ctx := context.Background()
	h.createVM(api.CreateVMRequest{Name: "web1", Image: "tiny", Start: true})
	admin := h.clientFor(tokens["admin"])
	tok, err := admin.CreateToken(ctx, api.CreateTokenRequest{User: "bob", Name: "ci"})
	must(t, err)
	if tok.Role != api.RoleViewer || tok.User != "bob" || !strings.HasPrefix(tok.Token, "shoal_") || tok.ID == "" {
		t.Fatalf("token made for bob: %+v", tok)
	}
	viewer := h.clientFor(tok.Token)

	vms, err := viewer.ListVMs(ctx)
	if err != nil || len(vms) != 1 || vms[0].Name != "web1" {
		t.Fatalf("viewer lists %+v, %v", vms, err)
	}
	_, err = viewer.CreateVM(ctx, api.CreateVMRequest{Name: "web2", Image: "tiny"}, false)
	wantRefused(t, "create", err, api.ErrForbidden, "user bob (viewer) may not create VMs: it needs the operator role")
	_, err = viewer.VMAction(ctx, "web1", "stop", false)
	wantRefused(t, "stop", err, api.ErrForbidden, "user bob (viewer) may not stop VMs: it needs the operator role")
	_, err = viewer.Console(ctx, "web1")
	wantRefused(t, "console", err, api.ErrForbidden, "user bob (viewer) may not open VM consoles: it needs the operator role")
	_, err = viewer.MigrateVM(ctx, "web1", api.MigrateRequest{})
	wantRefused(t, "migrate", err, api.ErrForbidden, "user bob (viewer) may not migrate VMs: it needs the operator role")
	if vm := h.spec("web1"); vm.Power != api.PowerRunning || vm.Migration != nil || h.vmCount() != 1 {
		t.Errorf("refused calls changed something: %+v, %d VMs", vm, h.vmCount())
	}

	must(t, admin.RevokeToken(ctx, tok.ID))
	_, err = viewer.ListVMs(ctx)
	wantRefused(t, "revoked token", err, api.ErrUnauthorized, "invalid API token")

	short, err := admin.CreateToken(ctx, api.CreateTokenRequest{User: "bob", Expires: "1s"})
	must(t, err)
	_, err = h.clientFor(short.Token).ListVMs(ctx)
	must(t, err)
	time.Sleep(time.Until(*short.Expires) + 50*time.Millisecond)
	_, err = h.clientFor(short.Token).ListVMs(ctx)
	wantRefused(t, "expired token", err, api.ErrUnauthorized, "API token "+short.ID+" expired at", "shoal token create")
}
