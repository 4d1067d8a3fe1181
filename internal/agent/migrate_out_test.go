package agent

import (
	"strings"
	"testing"

	"github.com/shoalvm/shoal/internal/api"
)

// TestOutgoingNeverFallsBackToClearText: a migration that asked for TLS
// refuses a target endpoint in clear, rather than streaming the guest's
// memory and disk unencrypted.
func TestOutgoingNeverFallsBackToClearText(t *testing.T) {
	w := &worker{a: &Agent{}}
	for _, ep := range []api.MigrationEndpoint{
		{URI: "tcp:10.57.0.3:40000"},
		{URI: "tcp:10.57.0.3:40000", NBD: "10.57.0.3:40001"},
	} {
		s := &api.VMSpec{Name: "web1", Migration: &api.Migration{ID: "m1", Source: "host1", Target: "host2", Endpoint: &ep}}
		uri, _, err := w.outgoingStreams(s)
		if err == nil || !strings.Contains(err.Error(), "not encrypted") || !strings.Contains(err.Error(), "--insecure") {
			t.Errorf("endpoint %+v: got %q, %v; want a refusal", ep, uri, err)
		}
	}
	// Asked for: clear text is used, but a disk export only through the
	// target agent's end.
	s := &api.VMSpec{Name: "web1", Migration: &api.Migration{ID: "m1", Source: "host1", Target: "host2",
		Options:  api.MigrationOptions{Insecure: true},
		Endpoint: &api.MigrationEndpoint{URI: "tcp:10.57.0.3:40000", NBD: "10.57.0.3:40001"}}}
	if _, _, err := w.outgoingStreams(s); err == nil || !strings.Contains(err.Error(), "not tunnel:HOST:PORT") {
		t.Errorf("insecure, direct disk export: %v", err)
	}
	s.Migration.Endpoint.NBD = ""
	if uri, _, err := w.outgoingStreams(s); err != nil || uri != "tcp:10.57.0.3:40000" {
		t.Errorf("insecure: %q, %v", uri, err)
	}
}
