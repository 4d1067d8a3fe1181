package api_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/shoalvm/shoal/internal/api"
)

func TestHTTPStatusAndFromHTTPRoundTrip(t *testing.T) {
	tests := []struct {
		kind   error
		status int
		name   string
	}{
		{api.ErrInvalid, http.StatusBadRequest, "invalid"},
		{api.ErrUnauthorized, http.StatusUnauthorized, "unauthorized"},
		{api.ErrForbidden, http.StatusForbidden, "forbidden"},
		{api.ErrNotFound, http.StatusNotFound, "not_found"},
		{api.ErrConflict, http.StatusConflict, "conflict"},
		{api.ErrTooLarge, http.StatusRequestEntityTooLarge, "too_large"},
		{api.ErrCapacity, http.StatusInsufficientStorage, "capacity"},
		{api.ErrUnavailable, http.StatusServiceUnavailable, "unavailable"},
		{api.ErrInternal, http.StatusInternalServerError, "internal"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			msg := fmt.Sprintf("something of kind %s happened: do X", tc.name)
			err := api.Errorf(tc.kind, "something of kind %s happened: %s", tc.name, "do X")
			if err.Error() != msg {
				t.Fatalf("Errorf message = %q, want %q", err, msg)
			}
			if !errors.Is(err, tc.kind) {
				t.Fatalf("Errorf(%v) is not its kind", tc.kind)
			}
			code, name := api.HTTPStatus(err)
			if code != tc.status || name != tc.name {
				t.Fatalf("HTTPStatus = %d %q, want %d %q", code, name, tc.status, tc.name)
			}
			// Wrapped further by a caller, the kind still decides.
			if code, _ := api.HTTPStatus(fmt.Errorf("context: %w", err)); code != tc.status {
				t.Errorf("HTTPStatus of a wrapped error = %d, want %d", code, tc.status)
			}

			back := api.FromHTTP(code, msg)
			if !errors.Is(back, tc.kind) {
				t.Errorf("FromHTTP(%d) = %v, not of kind %v", code, back, tc.kind)
			}
			if back.Error() != msg {
				t.Errorf("FromHTTP message = %q, want %q", back, msg)
			}
			if code2, name2 := api.HTTPStatus(back); code2 != code || name2 != name {
				t.Errorf("round trip gave %d %q, want %d %q", code2, name2, code, name)
			}
			// The sentinel alone maps the same way.
			if code, _ := api.HTTPStatus(tc.kind); code != tc.status {
				t.Errorf("HTTPStatus(sentinel) = %d, want %d", code, tc.status)
			}
		})
	}
}

func TestHTTPStatusOfUntypedErrors(t *testing.T) {
	for _, err := range []error{
		errors.New("boom"),
		context.DeadlineExceeded,
		fmt.Errorf("wrapped: %w", errors.New("boom")),
	} {
		if code, name := api.HTTPStatus(err); code != 500 || name != "internal" {
			t.Errorf("HTTPStatus(%v) = %d %q, want 500 internal", err, code, name)
		}
	}
}

func TestFromHTTPUnknownStatus(t *testing.T) {
	for _, code := range []int{418, 502, 504, 599} {
		err := api.FromHTTP(code, "proxy said no")
		if !errors.Is(err, api.ErrInternal) || err.Error() != "proxy said no" {
			t.Errorf("FromHTTP(%d) = %v, want ErrInternal with the message", code, err)
		}
		for _, k := range []error{api.ErrInvalid, api.ErrNotFound, api.ErrConflict, api.ErrUnavailable} {
			if errors.Is(err, k) {
				t.Errorf("FromHTTP(%d) is also %v", code, k)
			}
		}
	}
}

func TestIsNotFound(t *testing.T) {
	if !api.IsNotFound(fmt.Errorf("x: %w", api.Errorf(api.ErrNotFound, "vm %q not found", "a"))) {
		t.Error("wrapped not-found error not recognised")
	}
	if api.IsNotFound(api.Errorf(api.ErrConflict, "exists")) || api.IsNotFound(nil) {
		t.Error("IsNotFound true for a conflict or nil")
	}
}
