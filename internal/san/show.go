package san

import (
	"fmt"
	"strconv"
	"strings"
)

// What tgtd's show answers hold, parsed. These are pure functions of the
// text tgtd prints (the same text as `tgtadm --op show`).

// target is one target of `--mode target --op show`.
type target struct {
	TID      int
	Name     string
	LUNs     []lun
	Accounts []string // incoming CHAP users bound to it
	ACL      []string // initiator addresses and names allowed to log in
}

// lun is a logical unit of a target. LUN 0 is tgt's own controller.
type lun struct {
	Num  uint64
	Path string // backing store path, "" for none
}

// conn is one connection of `--mode conn --op show --tid T`.
type conn struct {
	SID       uint64
	CID       uint32
	Initiator string
	Address   string
}

// parseTargets reads the answer of a show of every target:
//
//	Target 1: iqn.2026-12.io.shoal:vol-ab
//	    System information:
//	    ...
//	    LUN information:
//	        LUN: 1
//	            Backing store path: /srv/san/vol-ab.img
//	    Account information:
//	        shoal
//	    ACL information:
//	        iqn.2026-12.io.shoal:host-h1
//
// Account and ACL entries are bare lines under their section (an
// outgoing account ends in " (outgoing)" and is left out); address and
// name ACL entries share the ACL section.
func parseTargets(text string) ([]target, error) {
	var out []target
	var cur *target
	section := ""
	for i, raw := range strings.Split(text, "\n") {
		line := strings.TrimSpace(raw)
		if line == "" {
			continue
		}
		indent := len(raw) - len(strings.TrimLeft(raw, " \t"))
		if indent == 0 {
			rest, ok := strings.CutPrefix(line, "Target ")
			num, name, ok2 := strings.Cut(rest, ": ")
			tid, err := strconv.Atoi(num)
			if !ok || !ok2 || err != nil {
				return nil, fmt.Errorf("tgtd target list, line %d: unexpected %q", i+1, line)
			}
			out = append(out, target{TID: tid, Name: strings.TrimSpace(name)})
			cur, section = &out[len(out)-1], ""
			continue
		}
		if cur == nil {
			return nil, fmt.Errorf("tgtd target list, line %d: %q before any target", i+1, line)
		}
		if indent <= 4 && strings.HasSuffix(line, " information:") {
			section = strings.TrimSuffix(line, " information:")
			continue
		}
		switch section {
		case "LUN":
			if v, ok := strings.CutPrefix(line, "LUN: "); ok {
				n, err := strconv.ParseUint(v, 10, 64)
				if err != nil {
					return nil, fmt.Errorf("tgtd target list, line %d: bad LUN %q", i+1, v)
				}
				cur.LUNs = append(cur.LUNs, lun{Num: n})
			} else if v, ok := strings.CutPrefix(line, "Backing store path: "); ok && len(cur.LUNs) > 0 {
				if v == "None" {
					v = ""
				}
				cur.LUNs[len(cur.LUNs)-1].Path = v
			}
		case "Account":
			if !strings.HasSuffix(line, " (outgoing)") {
				cur.Accounts = append(cur.Accounts, line)
			}
		case "ACL":
			cur.ACL = append(cur.ACL, line)
		}
	}
	return out, nil
}

// parseConns reads the answer of a show of a target's connections:
//
//	Session: 3
//	    Connection: 0
//	        Initiator: iqn.2026-12.io.shoal:host-h1
//	        IP Address: 127.0.0.1
func parseConns(text string) ([]conn, error) {
	var out []conn
	var sid uint64
	haveSID := false
	for i, raw := range strings.Split(text, "\n") {
		line := strings.TrimSpace(raw)
		key, val, _ := strings.Cut(line, ": ")
		switch key {
		case "":
			continue
		case "Session":
			n, err := strconv.ParseUint(val, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("tgtd connection list, line %d: bad session %q", i+1, val)
			}
			sid, haveSID = n, true
		case "Connection":
			n, err := strconv.ParseUint(val, 10, 32)
			if err != nil || !haveSID {
				return nil, fmt.Errorf("tgtd connection list, line %d: unexpected %q", i+1, line)
			}
			out = append(out, conn{SID: sid, CID: uint32(n)})
		case "Initiator":
			if len(out) > 0 {
				out[len(out)-1].Initiator = val
			}
		case "IP Address":
			if len(out) > 0 {
				out[len(out)-1].Address = val
			}
		}
	}
	return out, nil
}

// parsePortals reads the answer of a show of the portals
// ("Portal: 127.0.0.1:3260,1", the last field the portal group tag) and
// returns the IP:port of each ("[::1]:3260" for IPv6).
func parsePortals(text string) []string {
	var out []string
	for _, raw := range strings.Split(text, "\n") {
		v, ok := strings.CutPrefix(strings.TrimSpace(raw), "Portal: ")
		if !ok {
			continue
		}
		if j := strings.LastIndexByte(v, ','); j >= 0 {
			v = v[:j]
		}
		out = append(out, v)
	}
	return out
}
