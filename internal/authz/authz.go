// Package authz decides who may do what: the roles, the rules that say
// which role each permission needs, and the decision "may identity I do
// action A on object O". It is pure: no I/O, no clock. The server's
// route table (internal/server/routes.go) names a permission for every
// route; the agent API has its own, certificate-based rules.
package authz

import (
	"context"
	"fmt"

	"github.com/shoalvm/shoal/internal/api"
)

// Role is what a user or token may do; a higher role may do everything a
// lower one may.
type Role int

// Roles, lowest first. None is no role at all (refused everything).
const (
	None Role = iota
	Viewer
	Operator
	Admin
)

var roleNames = map[Role]string{Viewer: api.RoleViewer, Operator: api.RoleOperator, Admin: api.RoleAdmin}

func (r Role) String() string {
	if n, ok := roleNames[r]; ok {
		return n
	}
	return "none"
}

// ParseRole reads a role's name.
func ParseRole(s string) (Role, error) {
	for r, n := range roleNames {
		if n == s {
			return r, nil
		}
	}
	return None, api.Errorf(api.ErrInvalid, "role %q is invalid: use admin, operator or viewer", s)
}

// Lower returns the lesser of two roles.
func Lower(a, b Role) Role { return min(a, b) }

// Identity is who calls: a user, through one of its tokens, with the
// role in effect for this call.
type Identity struct {
	User    string
	Role    Role
	Project string // the project the user is confined to; "" for all
	TokenID string
}

func (i Identity) String() string { return fmt.Sprintf("user %s (%s)", i.User, i.Role) }

// Object is what an action applies to, as far as the rules care.
type Object struct {
	// Owner is the user an object belongs to (a user's own record, a
	// token): some permissions are granted on one's own objects.
	Owner string
	// Project is the project of the object (a VM's, or a project
	// itself); "" when it has none or does not exist. To a user of
	// another project it does not exist: Name (`vm "web"`) and Hint
	// make the not-found answer, the same as for a missing object.
	Project, Name, Hint string
}

// Sees reports whether id may see the VMs and the record of project p
// (a VM's spec project; "" is api.DefaultProject): a user confined to a
// project sees that one only.
func (i Identity) Sees(p string) bool {
	return i.Project == "" || i.Project == api.ProjectOf(p)
}

// CreateIn returns the project a VM created by id goes into when the
// request names asked ("" for none): the user's project, or for a user
// without one the asked project or api.DefaultProject. A user confined
// to a project may not create in another one (api.ErrForbidden).
func CreateIn(id Identity, asked string) (string, error) {
	switch {
	case id.Project == "":
		return api.ProjectOf(asked), nil
	case asked == "" || asked == id.Project:
		return id.Project, nil
	}
	return "", api.Errorf(api.ErrForbidden, "%s of project %s may not create VMs in project %s", id, id.Project, asked)
}

// Permission names a kind of action.
type Permission string

// Permissions of the user API.
const (
	ReadVMs        Permission = "vm.read"       // list and show VMs, their migrations
	CreateVMs      Permission = "vm.create"     // create VMs
	PowerVMs       Permission = "vm.power"      // start, stop, restart, pause, resume
	ChangeVMs      Permission = "vm.set"        // change a VM's settings
	DeleteVMs      Permission = "vm.delete"     // delete VMs
	MoveVMs        Permission = "vm.migrate"    // migrate, cancel a migration, recover
	ConsoleVMs     Permission = "vm.console"    // the serial console
	ReadVMLogs     Permission = "vm.logs"       // what the console printed
	ReadHosts      Permission = "host.read"     // list and show hosts, their drains
	DrainHosts     Permission = "host.drain"    // drain and resume hosts
	ReadCluster    Permission = "cluster.read"  // networks, images, events, servers
	ManageImages   Permission = "image.write"   // build, import, delete images
	ManageCluster  Permission = "cluster.admin" // join tokens, server removal
	ManageUsers    Permission = "user.admin"    // users; one's own record and password
	UseTokens      Permission = "token"         // API tokens: one's own, or (admin) anyone's
	ReadAudit      Permission = "audit.read"    // the audit trail
	ReadProjects   Permission = "project.read"  // projects, their limits and usage
	ManageProjects Permission = "project.admin" // create and delete projects
	ReadVolumes    Permission = "volume.read"   // list and show volumes
	ManageVolumes  Permission = "volume.write"  // create, resize and delete volumes
	ManagePools    Permission = "pool.admin"    // define and remove storage pools
)

// rule is what a permission needs: the role min on any object, or the
// role self on the caller's own objects (None: no such grant).
type rule struct {
	min, self Role
	what      string // the action, for a refusal: "may not <what>"
}

// rules is the one table of what each permission needs.
var rules = map[Permission]rule{
	ReadVMs:        {min: Viewer, what: "see VMs"},
	CreateVMs:      {min: Operator, what: "create VMs"},
	PowerVMs:       {min: Operator, what: "start or stop VMs"},
	ChangeVMs:      {min: Operator, what: "change VMs"},
	DeleteVMs:      {min: Operator, what: "delete VMs"},
	MoveVMs:        {min: Operator, what: "migrate VMs"},
	ConsoleVMs:     {min: Operator, what: "open VM consoles"},
	ReadVMLogs:     {min: Operator, what: "read VM console logs"},
	ReadHosts:      {min: Viewer, what: "see hosts"},
	DrainHosts:     {min: Operator, what: "drain or resume hosts"},
	ReadCluster:    {min: Viewer, what: "see the cluster"},
	ManageImages:   {min: Admin, what: "change images"},
	ManageCluster:  {min: Admin, what: "change the cluster's membership"},
	ManageUsers:    {min: Admin, self: Viewer, what: "manage other users"},
	UseTokens:      {min: Admin, self: Viewer, what: "manage other users' tokens"},
	ReadAudit:      {min: Admin, what: "read the audit trail"},
	ReadProjects:   {min: Viewer, what: "see projects"},
	ManageProjects: {min: Admin, what: "manage projects"},
	ReadVolumes:    {min: Viewer, what: "see volumes"},
	ManageVolumes:  {min: Operator, what: "change volumes"},
	ManagePools:    {min: Admin, what: "manage storage pools"},
}

// Known reports whether p is a permission with a rule.
func Known(p Permission) bool {
	_, ok := rules[p]
	return ok
}

// Needs returns the role p needs on an object that is not the caller's.
func Needs(p Permission) Role { return rules[p].min }

// Request is an action to decide on.
type Request struct {
	Perm   Permission
	Object Object
	// What names the action in a refusal ("stop VMs"); "" for the
	// permission's own words.
	What string
}

// Decide says whether id may do req: nil, or an api.ErrForbidden error
// that says in one line who may not do what and which role it needs, or
// an api.ErrNotFound one when the object is in a project id does not see.
func Decide(id Identity, req Request) error {
	r, ok := rules[req.Perm]
	what := req.What
	if what == "" {
		what = r.what
	}
	o := req.Object
	switch {
	case !ok:
		return api.Errorf(api.ErrForbidden, "%s may not do %q: no rule allows it", id, req.Perm)
	case o.Project != "" && !id.Sees(o.Project):
		// Hidden, not refused: saying "may not" would tell it exists.
		if o.Hint != "" {
			return api.Errorf(api.ErrNotFound, "%s not found: %s", o.Name, o.Hint)
		}
		return api.Errorf(api.ErrNotFound, "%s not found", o.Name)
	case id.Role >= r.min && id.Role > None:
		return nil
	case r.self != None && id.Role >= r.self && req.Object.Owner != "" && req.Object.Owner == id.User:
		return nil
	}
	return api.Errorf(api.ErrForbidden, "%s may not %s: it needs the %s role", id, what, r.min)
}

// TokenRole returns the role of a new token for a user of role user that
// asks for role asked (None: the user's own): never more than the user's.
func TokenRole(user, asked Role, name string) (Role, error) {
	if asked == None {
		return user, nil
	}
	if asked > user {
		return None, api.Errorf(api.ErrForbidden, "a token of user %s (%s) cannot have the %s role: a token never has more rights than its user", name, user, asked)
	}
	return asked, nil
}

type ctxKey struct{}

// WithIdentity returns ctx carrying who calls.
func WithIdentity(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, ctxKey{}, id)
}

// FromContext returns who calls, if known.
func FromContext(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(ctxKey{}).(Identity)
	return id, ok
}
