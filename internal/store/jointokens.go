package store

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shoalvm/shoal/internal/api"
)

// Join token kinds: what a token lets its holder join as. A host token
// buys a host's certificate; a server token buys the cluster's CA key.
const (
	JoinHost   = "host"
	JoinServer = "server"
)

// JoinToken is a one-time permission for a machine to join as a host or
// as a server replica.
type JoinToken struct {
	Kind      string    `json:"kind,omitempty"` // JoinHost or JoinServer; "" (made before kinds) is a host token
	Expires   time.Time `json:"expires"`
	CreatedAt time.Time `json:"created_at"`
}

func joinKey(secret string) string { return key("jointokens", HashToken(secret)) }

// serverJoinKey reserves a server name while its replica joins: from the
// join until it runs (and is a named etcd member and a live server).
func serverJoinKey(name string) string { return key("serverjoins", name) }

// ServerJoinGrace is how long a server name stays reserved after its join
// was granted, for the new replica to start and register.
const ServerJoinGrace = 10 * time.Minute

// PutJoinToken stores a join token's hash until it expires.
func (s *Store) PutJoinToken(ctx context.Context, secret string, t JoinToken) error {
	if t.Kind != JoinHost && t.Kind != JoinServer {
		return api.Errorf(api.ErrInvalid, "join token kind %q must be %q or %q", t.Kind, JoinHost, JoinServer)
	}
	ttl := int64(time.Until(t.Expires)/time.Second) + 1
	lease, err := s.c.Grant(ctx, ttl)
	if err != nil {
		return fmt.Errorf("join token: %w: %w", api.ErrUnavailable, err)
	}
	b, err := json.Marshal(t)
	if err != nil {
		return fmt.Errorf("encode join token: %w", err)
	}
	if _, err := s.c.Put(ctx, joinKey(secret), string(b), clientv3.WithLease(lease.ID)); err != nil {
		return fmt.Errorf("join token: %w: %w", api.ErrUnavailable, err)
	}
	return nil
}

// CheckJoinToken checks that secret is a join token of kind, good now,
// without using it up; it returns the token's revision, for the
// transaction that uses it. A wrong, used, expired or other-kind token is
// api.ErrUnauthorized.
func (s *Store) CheckJoinToken(ctx context.Context, secret, kind string) (int64, error) {
	t, rev, err := get[JoinToken](ctx, s.c, joinKey(secret), "join token")
	if api.IsNotFound(err) {
		return 0, api.Errorf(api.ErrUnauthorized, "join token is invalid, used or expired: make a new one with '%s'", tokenCommand(kind))
	}
	if err != nil {
		return 0, err
	}
	if time.Now().After(t.Expires) {
		return 0, api.Errorf(api.ErrUnauthorized, "join token expired at %s: make a new one with '%s'", t.Expires.Format(time.RFC3339), tokenCommand(kind))
	}
	if got := tokenKind(t); got != kind {
		return 0, api.Errorf(api.ErrUnauthorized, "this is a %s join token, and a %s joins only with a %s token: make one with '%s'", got, kind, kind, tokenCommand(kind))
	}
	return rev, nil
}

func tokenKind(t JoinToken) string {
	if t.Kind == "" {
		return JoinHost
	}
	return t.Kind
}

func tokenCommand(kind string) string {
	if kind == JoinServer {
		return "shoal cluster token --server"
	}
	return "shoal cluster token"
}

// JoinHost uses up a host join token and reserves the host's name, in one
// transaction: it creates the host's record (down until its agent
// registers, which takes the record over as ClaimHost does any record
// without an owner). Of concurrent joins under one name exactly one wins;
// the others get api.ErrConflict and keep their tokens.
func (s *Store) JoinHost(ctx context.Context, secret, name string) error {
	b, err := json.Marshal(api.Host{Name: name, State: api.HostDown})
	if err != nil {
		return fmt.Errorf("encode host: %w", err)
	}
	taken := api.Errorf(api.ErrConflict, "host %q is already a member: join this machine under another --host name", name)
	return s.useJoinToken(ctx, secret, JoinHost, hostKey(name), clientv3.OpPut(hostKey(name), string(b)), taken)
}

// JoinServer uses up a server join token and reserves the server's name
// for ServerJoinGrace, in one transaction. Of concurrent joins under one
// name exactly one wins; the others get api.ErrConflict and keep their
// tokens. ReleaseServerName frees the name of a join that failed after.
func (s *Store) JoinServer(ctx context.Context, secret, name string) error {
	lease, err := s.c.Grant(ctx, int64(ServerJoinGrace/time.Second))
	if err != nil {
		return fmt.Errorf("reserve server name: %w: %w", api.ErrUnavailable, err)
	}
	k := serverJoinKey(name)
	taken := api.Errorf(api.ErrConflict, "a server named %q is joining already: join this machine under another --name", name)
	err = s.useJoinToken(ctx, secret, JoinServer, k, clientv3.OpPut(k, time.Now().UTC().Format(time.RFC3339), clientv3.WithLease(lease.ID)), taken)
	if err != nil {
		_, _ = s.c.Revoke(context.WithoutCancel(ctx), lease.ID)
	}
	return err
}

// ReleaseServerName frees a server name JoinServer reserved.
func (s *Store) ReleaseServerName(ctx context.Context, name string) error {
	if _, err := s.c.Delete(ctx, serverJoinKey(name)); err != nil {
		return fmt.Errorf("release server name %s: %w: %w", name, api.ErrUnavailable, err)
	}
	return nil
}

// useJoinToken deletes a join token of kind and creates the key claim
// (with op) in one transaction: if claim exists, nothing changes and the
// error is taken.
func (s *Store) useJoinToken(ctx context.Context, secret, kind, claim string, op clientv3.Op, taken error) error {
	rev, err := s.CheckJoinToken(ctx, secret, kind)
	if err != nil {
		return err
	}
	k := joinKey(secret)
	resp, err := s.c.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(k), "=", rev), clientv3.Compare(clientv3.CreateRevision(claim), "=", 0)).
		Then(clientv3.OpDelete(k), op).
		Else(clientv3.OpGet(claim, clientv3.WithCountOnly())).Commit()
	if err != nil {
		return fmt.Errorf("join token: %w: %w", api.ErrUnavailable, err)
	}
	if resp.Succeeded {
		return nil
	}
	if resp.Responses[0].GetResponseRange().Count > 0 {
		return taken
	}
	return api.Errorf(api.ErrUnauthorized, "join token was just used: make a new one with '%s'", tokenCommand(kind))
}
