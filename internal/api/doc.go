// Package api holds Shoal's wire types (the JSON the REST API speaks), the
// validation rules for user input, and the sentinel error kinds that every
// layer wraps so that the HTTP layer can map them to status codes.
package api
