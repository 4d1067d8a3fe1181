package authz

import (
	"errors"
	"strings"
	"testing"

	"github.com/shoalvm/shoal/internal/api"
)

func TestDecide(t *testing.T) {
	admin := Identity{User: "root", Role: Admin}
	op := Identity{User: "olga", Role: Operator}
	bob := Identity{User: "bob", Role: Viewer}
	nobody := Identity{User: "ghost", Role: None}
	mine := func(id Identity) Object { return Object{Owner: id.User} }
	tests := []struct {
		id   Identity
		perm Permission
		obj  Object
		what string
		want string // "" = allowed, else in the refusal
	}{
		// Viewers read, and nothing else.
		{bob, ReadVMs, Object{}, "", ""},
		{bob, ReadHosts, Object{}, "", ""},
		{bob, ReadCluster, Object{}, "", ""},
		{bob, CreateVMs, Object{}, "", "user bob (viewer) may not create VMs: it needs the operator role"},
		{bob, PowerVMs, Object{}, "stop VMs", "user bob (viewer) may not stop VMs: it needs the operator role"},
		{bob, ConsoleVMs, Object{}, "", "may not open VM consoles: it needs the operator role"},
		{bob, ReadVMLogs, Object{}, "", "needs the operator role"},
		{bob, MoveVMs, Object{}, "", "may not migrate VMs"},
		{bob, DrainHosts, Object{}, "", "needs the operator role"},
		{bob, ReadAudit, Object{}, "", "needs the admin role"},
		// Operators run VMs and hosts, not users, images or membership.
		{op, CreateVMs, Object{}, "", ""},
		{op, PowerVMs, Object{}, "", ""},
		{op, ChangeVMs, Object{}, "", ""},
		{op, DeleteVMs, Object{}, "", ""},
		{op, MoveVMs, Object{}, "", ""},
		{op, ConsoleVMs, Object{}, "", ""},
		{op, ReadVMLogs, Object{}, "", ""},
		{op, DrainHosts, Object{}, "", ""},
		{op, ManageCluster, Object{}, "", "user olga (operator) may not change the cluster's membership: it needs the admin role"},
		{op, ManageImages, Object{}, "", "needs the admin role"},
		{op, ManageUsers, Object{}, "", "may not manage other users"},
		{op, UseTokens, Object{Owner: "bob"}, "", "may not manage other users' tokens"},
		// One's own record and tokens, whatever the role.
		{op, ManageUsers, mine(op), "", ""},
		{bob, UseTokens, mine(bob), "", ""},
		{bob, UseTokens, Object{Owner: "olga"}, "", "needs the admin role"},
		{bob, UseTokens, Object{}, "", "needs the admin role"},
		// Admins everything.
		{admin, ManageCluster, Object{}, "", ""},
		{admin, ManageUsers, Object{Owner: "bob"}, "", ""},
		{admin, UseTokens, Object{Owner: "bob"}, "", ""},
		{admin, ReadAudit, Object{}, "", ""},
		// No role, no rule: refused.
		{nobody, ReadVMs, Object{}, "", "user ghost (none) may not see VMs"},
		{nobody, UseTokens, Object{Owner: "ghost"}, "", "needs the admin role"},
		{admin, Permission("vm.fly"), Object{}, "", `may not do "vm.fly": no rule allows it`},
	}
	for _, tc := range tests {
		err := Decide(tc.id, Request{Perm: tc.perm, Object: tc.obj, What: tc.what})
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s %s on %+v: refused: %v", tc.id, tc.perm, tc.obj, err)
		case tc.want != "" && err == nil:
			t.Errorf("%s %s on %+v: allowed, want refused", tc.id, tc.perm, tc.obj)
		case tc.want != "" && (!errors.Is(err, api.ErrForbidden) || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n")):
			t.Errorf("%s %s: %v, want a one-line forbidden error containing %q", tc.id, tc.perm, err, tc.want)
		}
	}
}

func TestEveryPermissionHasARule(t *testing.T) {
	for _, p := range []Permission{ReadVMs, CreateVMs, PowerVMs, ChangeVMs, DeleteVMs, MoveVMs, ConsoleVMs, ReadVMLogs,
		ReadHosts, DrainHosts, ReadCluster, ManageImages, ManageCluster, ManageUsers, UseTokens, ReadAudit, ReadProjects, ManageProjects} {
		if !Known(p) || Needs(p) == None || rules[p].what == "" {
			t.Errorf("permission %q has no complete rule", p)
		}
	}
}

// TestProjects: a user confined to a project sees, acts on and creates
// in that project only; to it, another project's VM does not exist.
func TestProjects(t *testing.T) {
	dev := Identity{User: "dan", Role: Operator, Project: "dev"}
	all := Identity{User: "olga", Role: Operator}
	vm := func(p string) Object { return Object{Project: p, Name: `vm "web"`, Hint: "see 'shoal vm list'"} }
	tests := []struct {
		id   Identity
		perm Permission
		obj  Object
		want error // nil: allowed
		msg  string
	}{
		{dev, PowerVMs, vm("dev"), nil, ""},
		{dev, PowerVMs, vm("prod"), api.ErrNotFound, `vm "web" not found: see 'shoal vm list'`},
		{dev, ReadVMs, vm(api.DefaultProject), api.ErrNotFound, `vm "web" not found`},
		{dev, DeleteVMs, Object{}, nil, ""}, // no such VM: the handler says so
		{dev, ReadProjects, Object{Project: "prod", Name: `project "prod"`}, api.ErrNotFound, `project "prod" not found`},
		{dev, ReadProjects, Object{Project: "dev", Name: `project "dev"`}, nil, ""},
		{all, PowerVMs, vm("prod"), nil, ""},
		{all, ManageProjects, Object{}, api.ErrForbidden, "may not manage projects: it needs the admin role"},
		// Hidden before refused: a viewer of dev is not told prod's VM exists.
		{Identity{User: "vic", Role: Viewer, Project: "dev"}, PowerVMs, vm("prod"), api.ErrNotFound, "not found"},
	}
	for _, tc := range tests {
		err := Decide(tc.id, Request{Perm: tc.perm, Object: tc.obj})
		if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.msg)) {
			t.Errorf("%s (project %q) %s on %+v: %v, want %v %q", tc.id, tc.id.Project, tc.perm, tc.obj, err, tc.want, tc.msg)
		}
	}
	if !all.Sees("") || !all.Sees("prod") || dev.Sees("") || dev.Sees("prod") || !dev.Sees("dev") {
		t.Error("Sees does not follow the user's project")
	}
	if (Identity{Project: api.DefaultProject}).Sees("") != true {
		t.Error("a user of the default project does not see VMs made before projects")
	}
	creates := []struct {
		id          Identity
		asked, want string
		err         string
	}{
		{all, "", api.DefaultProject, ""},
		{all, "prod", "prod", ""},
		{dev, "", "dev", ""},
		{dev, "dev", "dev", ""},
		{dev, "prod", "", "user dan (operator) of project dev may not create VMs in project prod"},
	}
	for _, tc := range creates {
		got, err := CreateIn(tc.id, tc.asked)
		if got != tc.want || (tc.err == "") != (err == nil) || (err != nil && (!errors.Is(err, api.ErrForbidden) || !strings.Contains(err.Error(), tc.err))) {
			t.Errorf("CreateIn(%s of %q, %q) = %q, %v; want %q %q", tc.id, tc.id.Project, tc.asked, got, err, tc.want, tc.err)
		}
	}
}

func TestTokenRole(t *testing.T) {
	tests := []struct {
		user, asked, want Role
		err               string
	}{
		{Admin, None, Admin, ""},
		{Operator, None, Operator, ""},
		{Admin, Viewer, Viewer, ""},
		{Operator, Operator, Operator, ""},
		{Viewer, Operator, None, "a token of user u (viewer) cannot have the operator role"},
		{Operator, Admin, None, "never has more rights than its user"},
	}
	for _, tc := range tests {
		got, err := TokenRole(tc.user, tc.asked, "u")
		if tc.err != "" {
			if !errors.Is(err, api.ErrForbidden) || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("TokenRole(%s, %s) = %v, want %q", tc.user, tc.asked, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("TokenRole(%s, %s) = %s, %v; want %s", tc.user, tc.asked, got, err, tc.want)
		}
	}
	if Lower(Admin, Viewer) != Viewer || Lower(Viewer, Operator) != Viewer {
		t.Error("Lower is not the lesser role")
	}
}

func TestParseRole(t *testing.T) {
	for _, r := range []Role{Viewer, Operator, Admin} {
		if got, err := ParseRole(r.String()); err != nil || got != r {
			t.Errorf("ParseRole(%q) = %v, %v", r, got, err)
		}
	}
	for _, bad := range []string{"", "root", "Admin", "none"} {
		if _, err := ParseRole(bad); !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), "use admin, operator or viewer") {
			t.Errorf("ParseRole(%q) = %v", bad, err)
		}
	}
}

func TestPassword(t *testing.T) {
	salt := []byte("0123456789abcdef")
	h, err := hashWith("correct horse", salt, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if !CheckPassword(h, "correct horse") || CheckPassword(h, "correct horsE") || CheckPassword(h, "") {
		t.Errorf("CheckPassword does not tell the password: %s", h)
	}
	for _, bad := range []string{"", "x", "md5$1$a$b", "pbkdf2-sha256$0$AAAA$AAAA", "pbkdf2-sha256$99999999$AAAA$AAAA", "pbkdf2-sha256$10$!!$AAAA"} {
		if CheckPassword(bad, "correct horse") {
			t.Errorf("CheckPassword(%q) accepted", bad)
		}
	}
	if _, err := HashPassword("short"); !errors.Is(err, api.ErrInvalid) {
		t.Errorf("short password: %v", err)
	}
	full, err := HashPassword("correct horse")
	if err != nil || !strings.HasPrefix(full, "pbkdf2-sha256$600000$") || !CheckPassword(full, "correct horse") {
		t.Errorf("HashPassword = %q, %v", full, err)
	}
}
