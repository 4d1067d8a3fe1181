package agent

import (
	"context"

	"github.com/shoalvm/shoal/internal/api"
)

// relayState is the frame relay of one migration (see relay*).
type relayState struct{}

func (w *worker) relayMark()                                            {}
func (w *worker) relayForward(ctx context.Context, s *api.VMSpec)       {}
func (w *worker) relayed() int                                          { return 0 }
func (w *worker) relayListen(ctx context.Context, s *api.VMSpec) string { return "" }
func (w *worker) relayDeliver()                                         {}
