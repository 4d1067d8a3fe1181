package agent

import (
	"testing"
	"time"
)

func TestQEMUDowntime(t *testing.T) {
	ms := time.Millisecond
	for _, c := range []struct{ limit, want time.Duration }{
		{50 * ms, 30 * ms},   // the default: 20 ms kept for the commit and resume
		{300 * ms, 280 * ms}, // QEMU's own default
		{30 * ms, 15 * ms},   // never under half the limit
		{1 * ms, ms / 2},     // QEMU is then given 1 ms, its least
		{0, 0},               // none: QEMU's default
	} {
		if got := qemuDowntime(c.limit); got != c.want {
			t.Errorf("qemuDowntime(%s) = %s, want %s", c.limit, got, c.want)
		}
	}
}
