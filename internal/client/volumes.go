package client

import (
	"context"
	"net/url"

	"github.com/shoalvm/shoal/internal/api"
)

// ListVolumes returns the volumes the caller may see; pool "" is all.
func (c *Client) ListVolumes(ctx context.Context, pool string) ([]api.Volume, error) {
	var out []api.Volume
	path := "/v1/volumes"
	if pool != "" {
		path += "?pool=" + url.QueryEscape(pool)
	}
	return out, c.do(ctx, "GET", path, nil, &out)
}

// CreateVolume makes a volume and waits until its storage is made.
func (c *Client) CreateVolume(ctx context.Context, req api.CreateVolumeRequest) (api.Volume, error) {
	var out api.Volume
	return out, c.do(ctx, "POST", "/v1/volumes", req, &out)
}

// GetVolume returns one volume.
func (c *Client) GetVolume(ctx context.Context, name string) (api.Volume, error) {
	var out api.Volume
	return out, c.do(ctx, "GET", "/v1/volumes/"+esc(name), nil, &out)
}

// ResizeVolume grows a volume and waits until it has grown.
func (c *Client) ResizeVolume(ctx context.Context, name, size string) (api.Volume, error) {
	var out api.Volume
	return out, c.do(ctx, "POST", "/v1/volumes/"+esc(name)+"/resize", api.ResizeVolumeRequest{Size: size}, &out)
}

// DeleteVolume removes a volume that no VM uses, with its storage.
func (c *Client) DeleteVolume(ctx context.Context, name string) error {
	return c.do(ctx, "DELETE", "/v1/volumes/"+esc(name), nil, nil)
}

// ListPools returns the storage pools the hosts that are up report.
func (c *Client) ListPools(ctx context.Context) ([]api.Pool, error) {
	var out []api.Pool
	return out, c.do(ctx, "GET", "/v1/pools", nil, &out)
}

// GetPool returns one pool.
func (c *Client) GetPool(ctx context.Context, name string) (api.Pool, error) {
	var out api.Pool
	return out, c.do(ctx, "GET", "/v1/pools/"+esc(name), nil, &out)
}

// AttachVolume attaches a volume to a VM (hot, if it runs) and waits
// until the VM's QEMU has it.
func (c *Client) AttachVolume(ctx context.Context, vm, volume string) (api.VM, error) {
	var out api.VM
	return out, c.do(ctx, "POST", "/v1/vms/"+esc(vm)+"/attach", api.AttachRequest{Volume: volume}, &out)
}

// DetachVolume detaches a volume from a VM (hot, if it runs) and waits
// until the VM's QEMU has let it go and the volume is free.
func (c *Client) DetachVolume(ctx context.Context, vm, volume string) (api.VM, error) {
	var out api.VM
	return out, c.do(ctx, "POST", "/v1/vms/"+esc(vm)+"/detach", api.AttachRequest{Volume: volume}, &out)
}

// CreatePool defines an iSCSI or RBD pool (admins only); the answer has
// no secrets.
func (c *Client) CreatePool(ctx context.Context, cfg api.PoolConfig) (api.PoolConfig, error) {
	var out api.PoolConfig
	return out, c.do(ctx, "POST", "/v1/pools", cfg, &out)
}

// DeletePool removes a pool's definition; refused while it holds volumes.
func (c *Client) DeletePool(ctx context.Context, name string) error {
	return c.do(ctx, "DELETE", "/v1/pools/"+esc(name), nil, nil)
}
