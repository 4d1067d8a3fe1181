// Package store keeps Shoal's state in etcd: typed repositories for VMs,
// their statuses, hosts, images, networks, IP allocations and API tokens,
// with compare-and-swap helpers so that concurrent writers never clobber
// each other. It can also run an embedded etcd member.
package store
