package node

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// An agent whose lease (3 heartbeats) the server would refuse does not
// start, and says why.
func TestAgentRefusesAHeartbeatTooLong(t *testing.T) {
	err := RunAgent(context.Background(), slog.New(slog.DiscardHandler),
		AgentOptions{Host: "h1", DataDir: t.TempDir(), Heartbeat: 11 * time.Second}, nil)
	if err == nil || !strings.Contains(err.Error(), "--heartbeat 11s is too long") {
		t.Fatalf("RunAgent with an 11s heartbeat: %v", err)
	}
}
