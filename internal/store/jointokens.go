package store

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shoalvm/shoal/internal/api"
)

// JoinToken is a one-time permission for a machine to join as a host.
type JoinToken struct {
	Expires   time.Time `json:"expires"`
	CreatedAt time.Time `json:"created_at"`
}

func joinKey(secret string) string { return key("jointokens", HashToken(secret)) }

// PutJoinToken stores a join token's hash until it expires.
func (s *Store) PutJoinToken(ctx context.Context, secret string, t JoinToken) error {
	ttl := int64(time.Until(t.Expires)/time.Second) + 1
	lease, err := s.c.Grant(ctx, ttl)
	if err != nil {
		return fmt.Errorf("join token: %w: %w", api.ErrUnavailable, err)
	}
	b := fmt.Sprintf(`{"expires":%q,"created_at":%q}`, t.Expires.Format(time.RFC3339Nano), t.CreatedAt.Format(time.RFC3339Nano))
	if _, err := s.c.Put(ctx, joinKey(secret), b, clientv3.WithLease(lease.ID)); err != nil {
		return fmt.Errorf("join token: %w: %w", api.ErrUnavailable, err)
	}
	return nil
}

// UseJoinToken consumes a join token: it succeeds once, before expiry.
func (s *Store) UseJoinToken(ctx context.Context, secret string) error {
	k := joinKey(secret)
	t, rev, err := get[JoinToken](ctx, s.c, k, "join token")
	if api.IsNotFound(err) {
		return api.Errorf(api.ErrUnauthorized, "join token is invalid, used or expired: make a new one with 'shoal cluster token'")
	}
	if err != nil {
		return err
	}
	if time.Now().After(t.Expires) {
		return api.Errorf(api.ErrUnauthorized, "join token expired at %s: make a new one with 'shoal cluster token'", t.Expires.Format(time.RFC3339))
	}
	resp, err := s.c.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(k), "=", rev)).Then(clientv3.OpDelete(k)).Commit()
	if err != nil {
		return fmt.Errorf("join token: %w: %w", api.ErrUnavailable, err)
	}
	if !resp.Succeeded {
		return api.Errorf(api.ErrUnauthorized, "join token was just used")
	}
	return nil
}
