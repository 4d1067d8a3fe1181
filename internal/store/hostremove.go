package store

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shoalvm/shoal/internal/api"
)

// Revocation records that a host was removed from the cluster: every
// certificate issued to its name before At is refused from then on, by
// every server at once (they read it here). A machine that joins again
// under the name, with a new join token, gets a certificate issued later.
type Revocation struct {
	Host string    `json:"host"`
	At   time.Time `json:"at"`
}

func revokedKey(host string) string { return key("revoked", host) }

// HostRecord reads a host record and the revision it was written at.
func (s *Store) HostRecord(ctx context.Context, name string) (api.Host, int64, error) {
	return get[api.Host](ctx, s.c, hostKey(name), fmt.Sprintf("host %q", name))
}

// RemoveHost removes host from the cluster in one transaction: its record
// and liveness key go, and its certificates are revoked (Revocation). It
// holds only if the host's record is still at hostRev and no VM's spec
// changed after vmRev, the revision at which the caller saw none on the
// host; otherwise api.ErrConflict, and the caller looks again.
func (s *Store) RemoveHost(ctx context.Context, host string, hostRev, vmRev int64, at time.Time) error {
	rv := fmt.Sprintf(`{"host":%q,"at":%q}`, host, at.UTC().Format(time.RFC3339Nano))
	resp, err := s.c.Txn(ctx).If(
		clientv3.Compare(clientv3.ModRevision(hostKey(host)), "=", hostRev),
		clientv3.Compare(clientv3.ModRevision(VMPrefix).WithPrefix(), "<", vmRev+1),
	).Then(
		clientv3.OpDelete(hostKey(host)),
		clientv3.OpDelete(AlivePrefix+host),
		clientv3.OpPut(revokedKey(host), rv),
	).Commit()
	if err != nil {
		return fmt.Errorf("remove host %s: %w: %w", host, api.ErrUnavailable, err)
	}
	if !resp.Succeeded {
		return api.Errorf(api.ErrConflict, "host %s or the VMs changed meanwhile: try again", host)
	}
	return nil
}

// HostRevokedAt returns when host was last removed from the cluster, or
// the zero time if it never was.
func (s *Store) HostRevokedAt(ctx context.Context, host string) (time.Time, error) {
	r, _, err := get[Revocation](ctx, s.c, revokedKey(host), "revocation of host "+host)
	if api.IsNotFound(err) {
		return time.Time{}, nil
	}
	return r.At, err
}
