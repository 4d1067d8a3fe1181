package netdev

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestParsePool(t *testing.T) {
	tests := []struct {
		cidr                 string
		gw, first, last      string
		errContains, errNone string
	}{
		{cidr: "10.57.0.0/24", gw: "10.57.0.1", first: "10.57.0.10", last: "10.57.0.250"},
		{cidr: "192.168.100.0/24", gw: "192.168.100.1", first: "192.168.100.10", last: "192.168.100.250"},
		{cidr: "10.60.0.0/16", gw: "10.60.0.1", first: "10.60.0.10", last: "10.60.255.250"},
		{cidr: "10.64.0.0/23", gw: "10.64.0.1", first: "10.64.0.10", last: "10.64.1.250"},
		{cidr: "10.0.0.0/8", gw: "10.0.0.1", first: "10.0.0.10", last: "10.255.255.250"},
		{cidr: "10.57.0.128/25", gw: "10.57.0.129", first: "10.57.0.130", last: "10.57.0.254"},
		{cidr: "10.57.0.0/28", gw: "10.57.0.1", first: "10.57.0.2", last: "10.57.0.14"},
		{cidr: "10.57.0.8/29", gw: "10.57.0.9", first: "10.57.0.10", last: "10.57.0.14"},
		{cidr: "10.57.0.4/30", gw: "10.57.0.5", first: "10.57.0.6", last: "10.57.0.6"},
		{cidr: "10.57.0.0/31", errContains: "too small"},
		{cidr: "10.57.0.1/32", errContains: "too small"},
		{cidr: "10.0.0.0/7", errContains: "too large"},
		{cidr: "10.57.0.1/24", errContains: "use the network address 10.57.0.0/24"},
		{cidr: "fd00::/64", errContains: "only IPv4"},
		{cidr: "::ffff:10.57.0.0/120", errContains: "only IPv4"},
		{cidr: "10.57.0.0", errContains: "not a CIDR"},
		{cidr: "", errContains: "not a CIDR"},
		{cidr: "bogus/24", errContains: "not a CIDR"},
	}
	for _, tt := range tests {
		t.Run(tt.cidr, func(t *testing.T) {
			p, err := ParsePool(tt.cidr)
			if tt.errContains != "" {
				if err == nil {
					t.Fatalf("ParsePool(%q) = %v, want error containing %q", tt.cidr, p, tt.errContains)
				}
				if !strings.Contains(err.Error(), tt.errContains) || !errors.Is(err, ErrBadPool) {
					t.Fatalf("ParsePool(%q) error %q, want one containing %q and wrapping ErrBadPool", tt.cidr, err, tt.errContains)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParsePool(%q): %v", tt.cidr, err)
			}
			if p.Subnet.String() != tt.cidr || p.Gateway.String() != tt.gw || p.First.String() != tt.first || p.Last.String() != tt.last {
				t.Fatalf("ParsePool(%q) = %v, want gateway %s range %s-%s", tt.cidr, p, tt.gw, tt.first, tt.last)
			}
			if p.Contains(p.Gateway) {
				t.Errorf("pool range contains its gateway")
			}
			if got := p.GatewayPrefix().String(); got != tt.gw+tt.cidr[strings.Index(tt.cidr, "/"):] {
				t.Errorf("GatewayPrefix() = %s", got)
			}
		})
	}
}

func addrs(ss ...string) map[netip.Addr]bool {
	m := map[netip.Addr]bool{}
	for _, s := range ss {
		m[netip.MustParseAddr(s)] = true
	}
	return m
}

func TestPoolNext(t *testing.T) {
	p24, _ := ParsePool("10.57.0.0/24")
	p30, _ := ParsePool("10.57.0.4/30")
	p29, _ := ParsePool("10.57.0.8/29") // .10 - .14

	full24 := map[netip.Addr]bool{}
	for a := p24.First; ; a = a.Next() {
		full24[a] = true
		if a == p24.Last {
			break
		}
	}
	tests := []struct {
		name    string
		pool    Pool
		used    map[netip.Addr]bool
		want    string
		wantErr string
	}{
		{"empty", p24, nil, "10.57.0.10", ""},
		{"first used", p24, addrs("10.57.0.10"), "10.57.0.11", ""},
		{"hole", p24, addrs("10.57.0.10", "10.57.0.11", "10.57.0.13"), "10.57.0.12", ""},
		{"used outside range ignored", p24, addrs("10.57.0.1", "10.57.0.2", "10.57.0.251"), "10.57.0.10", ""},
		{"all but last", p24, func() map[netip.Addr]bool {
			m := addrs()
			for k := range full24 {
				m[k] = true
			}
			delete(m, p24.Last)
			return m
		}(), "10.57.0.250", ""},
		{"exhausted /24", p24, full24, "", "pool 10.57.0.0/24 exhausted"},
		{"slash30 free", p30, nil, "10.57.0.6", ""},
		{"slash30 exhausted", p30, addrs("10.57.0.6"), "", "pool 10.57.0.4/30 exhausted"},
		{"slash29 middle", p29, addrs("10.57.0.10", "10.57.0.11"), "10.57.0.12", ""},
		{"zero pool", Pool{}, nil, "", "no address range"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.pool.Next(tt.used)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr && !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Next() = %v, %v; want error %q", got, err, tt.wantErr)
				}
				if strings.Contains(tt.wantErr, "exhausted") {
					if err.Error() != tt.wantErr || !errors.Is(err, ErrPoolExhausted) {
						t.Fatalf("Next() error %q, want exactly %q wrapping ErrPoolExhausted", err, tt.wantErr)
					}
				}
				return
			}
			if err != nil || got.String() != tt.want {
				t.Fatalf("Next() = %v, %v; want %s", got, err, tt.want)
			}
		})
	}
}

func TestPoolContains(t *testing.T) {
	p, _ := ParsePool("10.57.0.0/24")
	tests := []struct {
		addr string
		want bool
	}{
		{"10.57.0.10", true},
		{"10.57.0.100", true},
		{"10.57.0.250", true},
		{"10.57.0.9", false},
		{"10.57.0.251", false},
		{"10.57.0.1", false},
		{"10.57.0.0", false},
		{"10.57.0.255", false},
		{"10.57.1.10", false},
		{"::ffff:10.57.0.20", true},
		{"fd00::10", false},
	}
	for _, tt := range tests {
		if got := p.Contains(netip.MustParseAddr(tt.addr)); got != tt.want {
			t.Errorf("Contains(%s) = %v, want %v", tt.addr, got, tt.want)
		}
	}
	if p.Contains(netip.Addr{}) {
		t.Errorf("Contains(zero Addr) = true")
	}
	if (Pool{}).Contains(netip.MustParseAddr("10.57.0.10")) {
		t.Errorf("zero Pool contains an address")
	}
}
