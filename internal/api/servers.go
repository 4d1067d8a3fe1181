package api

// Server is one control-plane replica (GET /v1/cluster/servers).
type Server struct {
	Name   string `json:"name"`
	URL    string `json:"url"`              // https://HOST:PORT where hosts and users reach it
	Leader bool   `json:"leader,omitempty"` // it runs the controllers (migrations, drains, failover)
}
