package client

import (
	"context"

	"github.com/shoalvm/shoal/internal/api"
)

// ClusterStatus returns the state of the cluster's etcd: each member's
// database against the quota, and the alarms raised.
func (c *Client) ClusterStatus(ctx context.Context) (api.ClusterStatus, error) {
	var out api.ClusterStatus
	return out, c.do(ctx, "GET", "/v1/cluster/status", nil, &out)
}
