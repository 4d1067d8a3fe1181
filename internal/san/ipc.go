package san

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// tgtd's management protocol, as tgtadm speaks it (usr/tgtadm.h, mgmt.c):
// one request per connection on a unix socket, a fixed header (struct
// tgtadm_req, 120 bytes on every Linux ABI that tgt builds for) followed
// by a NUL-terminated "key=value,key=value" parameter string; the answer
// is an 8-byte header (err, len) followed, on success, by len-8 bytes of
// text (what `tgtadm --op show` prints). Shoal speaks it directly rather
// than running tgtadm, so that the CHAP secret never appears on a command
// line (tgtadm takes it as --password).

// Modes and operations of tgtadm_req (enum tgtadm_mode, enum tgtadm_op).
const (
	modeSystem     = 0
	modeTarget     = 1
	modeDevice     = 2 // "logicalunit"
	modePortal     = 3
	modeConnection = 6
	modeAccount    = 7

	opNew    = 0
	opDelete = 1
	opShow   = 2
	opBind   = 3
	opUnbind = 4
	opUpdate = 5
)

// reqHeaderLen is sizeof(struct tgtadm_req).
const reqHeaderLen = 120

// request is one management request to tgtd.
type request struct {
	Mode, Op int
	TID      int32 // -1 = none (tgtadm's default; a show of all targets)
	SID      uint64
	LUN      uint64
	CID      uint32
	Force    bool
	Params   string // "key=value,..." without the trailing NUL
}

// encode lays out r as tgtd reads it: the header, then Params and a NUL.
func (r request) encode() []byte {
	body := []byte(nil)
	if r.Params != "" {
		body = append([]byte(r.Params), 0)
	}
	b := make([]byte, reqHeaderLen, reqHeaderLen+len(body))
	le := binary.LittleEndian
	le.PutUint32(b[0:], uint32(r.Mode))
	le.PutUint32(b[4:], uint32(r.Op))
	copy(b[8:8+63], "iscsi") // char lld[64]
	le.PutUint32(b[72:], uint32(reqHeaderLen+len(body)))
	le.PutUint32(b[76:], uint32(r.TID))
	le.PutUint64(b[80:], r.SID)
	le.PutUint64(b[88:], r.LUN)
	le.PutUint32(b[96:], r.CID)
	// host_no 100, device_type 104 (0 = disk), ac_dir 108 (0 = incoming),
	// pack 112 stay zero.
	if r.Force {
		le.PutUint32(b[116:], 1)
	}
	return append(b, body...)
}

// tgtError is a refusal by tgtd (enum tgtadm_errno).
type tgtError uint32

// The tgtadm_errno values Shoal tells apart.
const (
	errNoTarget   tgtError = 4
	errNoLUN      tgtError = 5
	errNoSession  tgtError = 6
	errNoConn     tgtError = 7
	errTargetHave tgtError = 9
	errLUNHave    tgtError = 10
	errACLHave    tgtError = 12
	errACLNone    tgtError = 13
	errUserHave   tgtError = 14
	errNoUser     tgtError = 15
)

var tgtErrorText = []string{
	"success", "unknown error", "out of memory", "can't find the driver",
	"can't find the target", "can't find the logical unit",
	"can't find the session", "can't find the connection",
	"can't find the binding", "this target already exists",
	"this logical unit number already exists", "this binding already exists",
	"this access control rule already exists",
	"this access control rule does not exist", "this account already exists",
	"can't find the account", "too many accounts", "invalid request",
	"this target already has an outgoing account", "this target is still active",
	"this logical unit is still active", "this driver is busy",
	"this operation isn't supported", "unknown parameter",
	"this device has Prevent Removal set",
}

func (e tgtError) Error() string {
	if int(e) < len(tgtErrorText) {
		return "tgtd: " + tgtErrorText[e]
	}
	return fmt.Sprintf("tgtd: error %d", uint32(e))
}

// isTgt says whether err is tgtd's refusal kind.
func isTgt(err error, kind tgtError) bool {
	var e tgtError
	return errors.As(err, &e) && e == kind
}

// admin talks to one tgtd over its management socket.
type admin struct {
	socket string // the unix socket tgtd listens on (TGT_IPC_SOCKET.port)
}

// do sends r and returns tgtd's text answer.
func (a admin) do(ctx context.Context, r request) (string, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", a.socket)
	if err != nil {
		return "", fmt.Errorf("tgtd management socket: %w", err)
	}
	defer c.Close()
	deadline := time.Now().Add(30 * time.Second)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	_ = c.SetDeadline(deadline)
	if _, err := c.Write(r.encode()); err != nil {
		return "", fmt.Errorf("tgtd request: %w", err)
	}
	var hdr [8]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return "", fmt.Errorf("tgtd answer: %w", err)
	}
	code := binary.LittleEndian.Uint32(hdr[0:])
	n := binary.LittleEndian.Uint32(hdr[4:])
	if code != 0 {
		return "", tgtError(code)
	}
	if n < 8 || n > 64<<20 {
		return "", fmt.Errorf("tgtd answer of bad length %d", n)
	}
	body := make([]byte, n-8)
	if _, err := io.ReadFull(c, body); err != nil {
		return "", fmt.Errorf("tgtd answer: %w", err)
	}
	return strings.TrimRight(string(body), "\x00"), nil
}
