package api

// Server is one control-plane replica (GET /v1/cluster/servers).
type Server struct {
	Name   string `json:"name"`
	URL    string `json:"url"`              // https://HOST:PORT where hosts and users reach it
	Leader bool   `json:"leader,omitempty"` // it runs the controllers (migrations, drains, failover)
}

// ClusterStatus is the state of the cluster's etcd (GET /v1/cluster/status):
// each member's database against the quota, and the alarms raised. etcd
// refuses every write once a member's database reaches the quota (the
// NOSPACE alarm); Shoal compacts and defragments it so that it never does.
type ClusterStatus struct {
	QuotaBytes int64        `json:"quota_bytes"` // the backend quota (what Shoal set, or assumes of an external etcd)
	Members    []EtcdMember `json:"members"`
	Alarms     []EtcdAlarm  `json:"alarms"`
	// Advice says what to do about the alarms, if any.
	Advice string `json:"advice,omitempty"`
}

// EtcdMember is one member of the cluster's etcd.
type EtcdMember struct {
	Name             string `json:"name"`
	ID               string `json:"id"` // hex, as etcdctl shows it
	Endpoint         string `json:"endpoint"`
	Leader           bool   `json:"leader"`
	Learner          bool   `json:"learner"`
	DBSizeBytes      int64  `json:"db_size_bytes"`        // its database file, what the quota counts
	DBSizeInUseBytes int64  `json:"db_size_in_use_bytes"` // in use: a defragmentation frees the rest
	Error            string `json:"error,omitempty"`      // it did not answer
}

// EtcdAlarm is an alarm raised on an etcd member: NOSPACE (its database
// reached the quota: etcd refuses writes) or CORRUPT.
type EtcdAlarm struct {
	Member string `json:"member"` // its name, or its id when it has none
	Kind   string `json:"kind"`
}
