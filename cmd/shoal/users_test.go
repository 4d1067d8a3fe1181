package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestIntegrationUsersTokensAudit runs the user, token and audit verbs
// as a user would: an operator creates and deletes a VM with a token made
// for it, a viewer is refused with one line, 'shoal audit' shows alice's
// calls with the result, a revoked token is refused, and a restart of
// 'shoal up' keeps the CLI's token.
func TestIntegrationUsersTokensAudit(t *testing.T) {
	l := newLab(t)
	l.start()
	adminToken := l.token()

	out, errOut, err := l.shoalStdin("correct horse\n", "user", "create", "alice", "--role", "operator", "--password-stdin")
	if err != nil || !strings.Contains(out, "user alice created (operator)") {
		t.Fatalf("user create: %v %q %q", err, out, errOut)
	}
	l.mustShoal("user", "create", "bob", "--role", "viewer")
	var users []struct {
		Name, Role  string
		HasPassword bool `json:"has_password"`
	}
	must(t, json.Unmarshal([]byte(l.mustShoal("user", "list", "-o", "json")), &users))
	if len(users) != 3 || users[1].Name != "alice" || !users[1].HasPassword || users[2].Role != "viewer" {
		t.Fatalf("user list: %+v", users)
	}

	var tok struct{ ID, Token, User, Role string }
	must(t, json.Unmarshal([]byte(l.mustShoal("token", "create", "--user", "alice", "--name", "ci", "--expires", "30d", "-o", "json")), &tok))
	if tok.ID == "" || !strings.HasPrefix(tok.Token, "shoal_") || tok.User != "alice" || tok.Role != "operator" {
		t.Fatalf("token create: %+v", tok)
	}
	bobToken := strings.TrimSpace(l.mustShoal("token", "create", "--user", "bob"))

	l.mustShoal("--token", tok.Token, "vm", "create", "web1", "--image", "tiny")
	l.mustShoal("--token", tok.Token, "vm", "delete", "web1")
	l.mustShoal("--token", bobToken, "vm", "list")
	_, errOut, err = l.shoal("--token", bobToken, "vm", "create", "web2", "--image", "tiny")
	if msg := strings.TrimSpace(errOut); err == nil || strings.Contains(msg, "\n") ||
		!strings.Contains(msg, "user bob (viewer) may not create VMs: it needs the operator role") {
		t.Fatalf("a viewer's create: %v %q", err, errOut)
	}

	var recs []struct{ Time, User, Action, Object, Result string }
	must(t, json.Unmarshal([]byte(l.mustShoal("audit", "--since", "1h", "--user", "alice", "-o", "json")), &recs))
	var got []string
	for _, r := range recs {
		if r.Time == "" {
			t.Errorf("audit record without time: %+v", r)
		}
		got = append(got, r.User+" "+r.Action+" "+r.Object+" "+r.Result)
	}
	if want := "alice vm.create vm/web1 ok; alice vm.delete vm/web1 ok"; strings.Join(got, "; ") != want {
		t.Fatalf("shoal audit --user alice: %q, want %q", got, want)
	}
	if table := l.mustShoal("audit", "--vm", "web1"); !strings.Contains(table, "vm.delete") || !strings.Contains(table, "alice") {
		t.Fatalf("shoal audit table:\n%s", table)
	}

	var list []map[string]any
	must(t, json.Unmarshal([]byte(l.mustShoal("token", "list", "-o", "json")), &list))
	for _, e := range list {
		for _, k := range []string{"id", "user", "role", "expires", "created_at"} {
			if _, ok := e[k]; !ok {
				t.Errorf("token list entry %v has no %q", e, k)
			}
		}
		if _, ok := e["token"]; ok {
			t.Errorf("token list shows a secret: %v", e)
		}
	}
	if len(list) != 3 {
		t.Errorf("token list: %d tokens, want admin's, alice's and bob's", len(list))
	}
	l.mustShoal("token", "revoke", tok.ID)
	if _, errOut, err := l.shoal("--token", tok.Token, "vm", "list"); err == nil || !strings.Contains(errOut, "invalid API token") {
		t.Fatalf("a revoked token: %v %q", err, errOut)
	}

	// A restart keeps the CLI's token and makes no other.
	l.kill()
	l.start()
	if l.token() != adminToken {
		t.Fatal("a restart of shoal up changed the CLI's token")
	}
	must(t, json.Unmarshal([]byte(l.mustShoal("token", "list", "--user", "admin", "-o", "json")), &list))
	if len(list) != 1 {
		t.Errorf("admin has %d tokens after a restart, want 1", len(list))
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
