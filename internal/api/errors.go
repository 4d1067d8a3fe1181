package api

import (
	"errors"
	"fmt"
	"net/http"
)

// Sentinel error kinds. Wrap them with %w; the server maps them to HTTP codes.
var (
	ErrInvalid      = errors.New("invalid")        // 400: bad input
	ErrUnauthorized = errors.New("unauthorized")   // 401: missing, wrong, expired or revoked token
	ErrForbidden    = errors.New("forbidden")      // 403: a known identity without the right
	ErrNotFound     = errors.New("not found")      // 404: unknown reference
	ErrConflict     = errors.New("conflict")       // 409: duplicate, or invalid in the current state
	ErrTooLarge     = errors.New("too large")      // 413: a request body over its limit
	ErrCapacity     = errors.New("no capacity")    // 507: does not fit
	ErrUnavailable  = errors.New("unavailable")    // 503: a part is down, try later
	ErrInternal     = errors.New("internal error") // 500
)

// Errorf returns an error of the given kind with a formatted message. The
// message is what the user sees, so it should say what to do.
func Errorf(kind error, format string, args ...any) error {
	return &Error{Kind: kind, Msg: fmt.Sprintf(format, args...)}
}

// Error is an error of a known kind with a user-facing message.
type Error struct {
	Kind error
	Msg  string
}

func (e *Error) Error() string { return e.Msg }
func (e *Error) Unwrap() error { return e.Kind }

// ErrorBody is the JSON body of every non-2xx API response.
type ErrorBody struct {
	Error string `json:"error"`
	Kind  string `json:"kind"`
}

var kinds = []struct {
	err    error
	status int
	name   string
}{
	{ErrInvalid, http.StatusBadRequest, "invalid"},
	{ErrUnauthorized, http.StatusUnauthorized, "unauthorized"},
	{ErrForbidden, http.StatusForbidden, "forbidden"},
	{ErrNotFound, http.StatusNotFound, "not_found"},
	{ErrConflict, http.StatusConflict, "conflict"},
	{ErrTooLarge, http.StatusRequestEntityTooLarge, "too_large"},
	{ErrCapacity, http.StatusInsufficientStorage, "capacity"},
	{ErrUnavailable, http.StatusServiceUnavailable, "unavailable"},
}

// HTTPStatus maps an error to its HTTP status code and kind name.
func HTTPStatus(err error) (int, string) {
	for _, k := range kinds {
		if errors.Is(err, k.err) {
			return k.status, k.name
		}
	}
	return http.StatusInternalServerError, "internal"
}

// FromHTTP rebuilds a typed error from a status code and message, for clients.
func FromHTTP(status int, msg string) error {
	for _, k := range kinds {
		if k.status == status {
			return &Error{Kind: k.err, Msg: msg}
		}
	}
	return &Error{Kind: ErrInternal, Msg: msg}
}

// IsNotFound reports whether err is of kind ErrNotFound.
func IsNotFound(err error) bool { return errors.Is(err, ErrNotFound) }

// KindByName is the kind HTTPStatus names name; ErrInternal if none.
func KindByName(name string) error {
	for _, k := range kinds {
		if k.name == name {
			return k.err
		}
	}
	return ErrInternal
}
