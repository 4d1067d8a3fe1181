package replica

import (
	"context"
	"net/http"
	"net/http/httptrace"
	"sync/atomic"
)

// Track returns a context for one HTTP request and a function that tells
// whether the request may have reached the server: false only while its
// headers were never written to a connection (the dial, the TLS handshake
// or the server's certificate check failed), so the server surely saw
// nothing of it.
func Track(ctx context.Context) (context.Context, func() bool) {
	var wrote atomic.Bool
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{WroteHeaders: func() { wrote.Store(true) }})
	return ctx, wrote.Load
}

// Idempotent reports whether a request with this method may be sent
// twice: only reads are.
func Idempotent(method string) bool {
	return method == http.MethodGet || method == http.MethodHead
}

// MayRetry reports whether a request that failed without an answer may be
// sent to another replica: if it surely did not reach a server, or if it
// only reads. A write that may have reached one is not sent again: its
// caller decides (the server may have done it).
func MayRetry(ctx context.Context, method string, sent bool) bool {
	if ctx.Err() != nil {
		return false
	}
	return !sent || Idempotent(method)
}

// RetryStatus reports whether an answer with this status to a request
// with this method may be asked of another replica: a read that met a
// failing replica (500, 502, 503, 504; not 507, which is the cluster's
// answer that it is full).
func RetryStatus(method string, status int) bool {
	switch status {
	case http.StatusInternalServerError, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return Idempotent(method)
	}
	return false
}

// Failing reports whether an answer with this status says the replica
// itself is in trouble (so later calls had better start elsewhere).
func Failing(status int) bool {
	return RetryStatus(http.MethodGet, status)
}
