package san

import (
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"testing"

	"github.com/shoalvm/shoal/internal/api"
)

// targetsText is what tgtd 1.0.85 answered to a show of every target,
// with a session open (the I_T nexus), an outgoing account and an
// address rule added by hand.
const targetsText = `Target 1: iqn.2026-12.io.shoal:vol-abc
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
        I_T nexus: 3
            Initiator: iqn.2026-12.io.shoal:host-h1 alias: none
            Connection: 0
                IP Address: 127.0.0.1
    LUN information:
        LUN: 0
            Type: controller
            SCSI ID: IET     00010000
            SCSI SN: beaf10
            Size: 0 MB, Block size: 1
            Online: Yes
            Removable media: No
            Prevent removal: No
            Readonly: No
            SWP: No
            Thin-provisioning: No
            Backing store type: null
            Backing store path: None
            Backing store flags: 
        LUN: 1
            Type: disk
            SCSI ID: IET     00010001
            SCSI SN: beaf11
            Size: 67 MB, Block size: 512
            Online: Yes
            Removable media: No
            Prevent removal: No
            Readonly: No
            SWP: No
            Thin-provisioning: No
            Backing store type: rdwr
            Backing store path: /srv/san/vol-abc.img
            Backing store flags: 
    Account information:
        shoal
        other (outgoing)
    ACL information:
        192.168.0.0/24
        iqn.2026-12.io.shoal:host-h1
Target 7: iqn.2026-12.io.shoal:vol-de
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
    LUN information:
        LUN: 0
            Type: controller
            Backing store path: None
    Account information:
    ACL information:
`

func TestParseTargets(t *testing.T) {
	got, err := parseTargets(targetsText)
	if err != nil {
		t.Fatal(err)
	}
	want := []target{
		{TID: 1, Name: "iqn.2026-12.io.shoal:vol-abc",
			LUNs:     []lun{{Num: 0}, {Num: 1, Path: "/srv/san/vol-abc.img"}},
			Accounts: []string{"shoal"},
			ACL:      []string{"192.168.0.0/24", "iqn.2026-12.io.shoal:host-h1"}},
		{TID: 7, Name: "iqn.2026-12.io.shoal:vol-de", LUNs: []lun{{Num: 0}}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
	if ts, err := parseTargets(""); err != nil || len(ts) != 0 {
		t.Fatalf("no targets: %v %v", ts, err)
	}
	for _, bad := range []string{"Target x: iqn\n", "    LUN information:\n", "Tgt 1: iqn\n"} {
		if _, err := parseTargets(bad); err == nil {
			t.Errorf("parseTargets(%q) took it", bad)
		}
	}
}

func TestParseConns(t *testing.T) {
	text := "Session: 3\n    Connection: 0\n        Initiator: iqn.2026-12.io.shoal:host-h1\n        IP Address: 127.0.0.1\n" +
		"Session: 5\n    Connection: 0\n        Initiator: iqn.2026-12.io.shoal:host-h2\n        IP Address: ::1\n" +
		"    Connection: 1\n        Initiator: iqn.2026-12.io.shoal:host-h2\n        IP Address: 10.0.0.2\n"
	got, err := parseConns(text)
	if err != nil {
		t.Fatal(err)
	}
	want := []conn{
		{SID: 3, CID: 0, Initiator: "iqn.2026-12.io.shoal:host-h1", Address: "127.0.0.1"},
		{SID: 5, CID: 0, Initiator: "iqn.2026-12.io.shoal:host-h2", Address: "::1"},
		{SID: 5, CID: 1, Initiator: "iqn.2026-12.io.shoal:host-h2", Address: "10.0.0.2"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
	if _, err := parseConns("    Connection: 0\n"); err == nil {
		t.Error("a connection before any session was taken")
	}
}

func TestParsePortals(t *testing.T) {
	got := parsePortals("Portal: 127.0.0.1:3260,1\nPortal: [::1]:3261,1\n")
	if want := []string{"127.0.0.1:3260", "[::1]:3261"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v want %v", got, want)
	}
	for in, want := range map[string]string{"127.0.0.1:3260": "127.0.0.1:3260", "[0:0::1]:3260": "[::1]:3260"} {
		if got, err := netipPortal(in); err != nil || got != want {
			t.Errorf("netipPortal(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

// TestRequestEncode checks the layout of struct tgtadm_req that tgtd reads.
func TestRequestEncode(t *testing.T) {
	b := request{Mode: modeConnection, Op: opDelete, TID: 3, SID: 5, CID: 1, LUN: 1, Force: true,
		Params: "initiator-name=iqn.x"}.encode()
	le := binary.LittleEndian
	if len(b) != reqHeaderLen+len("initiator-name=iqn.x")+1 || b[len(b)-1] != 0 {
		t.Fatalf("length %d or no NUL", len(b))
	}
	for _, c := range []struct {
		off  int
		want uint64
		size int
	}{{0, modeConnection, 4}, {4, opDelete, 4}, {72, uint64(len(b)), 4}, {76, 3, 4}, {80, 5, 8}, {88, 1, 8}, {96, 1, 4}, {116, 1, 4}} {
		var got uint64
		if c.size == 4 {
			got = uint64(le.Uint32(b[c.off:]))
		} else {
			got = le.Uint64(b[c.off:])
		}
		if got != c.want {
			t.Errorf("offset %d: %d, want %d", c.off, got, c.want)
		}
	}
	if string(b[8:13]) != "iscsi" || b[13] != 0 {
		t.Errorf("lld: %q", b[8:16])
	}
	if string(b[reqHeaderLen:len(b)-1]) != "initiator-name=iqn.x" {
		t.Errorf("params: %q", b[reqHeaderLen:])
	}
	all := request{Mode: modeTarget, Op: opShow, TID: -1}.encode()
	if len(all) != reqHeaderLen || int32(le.Uint32(all[76:])) != -1 || le.Uint32(all[72:]) != reqHeaderLen {
		t.Errorf("show of all targets: %v", all)
	}
	if err := fmt.Errorf("x: %w", errACLHave); !isTgt(err, errACLHave) || isTgt(err, errACLNone) || err.Error() != "x: tgtd: this access control rule already exists" {
		t.Errorf("tgtError: %v", err)
	}
}

func TestACLChanges(t *testing.T) {
	have := []string{"iqn.2026-12.io.shoal:host-a", "iqn.2026-12.io.shoal:host-b", "10.0.0.0/8"}
	bind, unbind := aclChanges(have, []string{"b", "c", "c"})
	if !reflect.DeepEqual(bind, []string{"iqn.2026-12.io.shoal:host-c"}) ||
		!reflect.DeepEqual(unbind, []string{"iqn.2026-12.io.shoal:host-a", "10.0.0.0/8"}) {
		t.Fatalf("bind %v unbind %v", bind, unbind)
	}
	if bind, unbind := aclChanges(nil, nil); bind != nil || unbind != nil {
		t.Fatalf("nothing to do: %v %v", bind, unbind)
	}
}

func TestChecks(t *testing.T) {
	for _, id := range []string{"", "ABC", "../x", "0g", string(make([]byte, 65))} {
		if err := checkID(id); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("checkID(%q) = %v", id, err)
		}
	}
	for _, n := range []int64{0, -512, 1000} {
		if err := checkSize(n); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("checkSize(%d) = %v", n, err)
		}
	}
	for _, c := range [][2]string{{"", "123456789012"}, {"a,b", "123456789012"}, {"u", "short"}, {"u", "with space 123"}} {
		if err := checkCHAP(c[0], c[1]); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("checkCHAP(%q, %q) = %v", c[0], c[1], err)
		}
	}
	if err := checkCHAP("shoal", "a,b=c-0123456789"); err != nil {
		t.Errorf("a secret with ',' and '=' (tgtd takes the rest of the request): %v", err)
	}
	if idOfFile("vol-ab.img") != "ab" || idOfFile("vol-AB.img") != "" || idOfFile(".vol-ab.img.tmp") != "" {
		t.Error("idOfFile")
	}
	if id, ok := volumeOfTarget("iqn.2026-12.io.shoal:vol-ab"); !ok || id != "ab" {
		t.Error("volumeOfTarget")
	}
	if _, ok := volumeOfTarget("iqn.2003-01.org.example:disk1"); ok {
		t.Error("volumeOfTarget took another's target")
	}
}
