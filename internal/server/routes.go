package server

import (
	"context"
	"net/http"
	"strings"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/audit"
	"github.com/shoalvm/shoal/internal/authz"
)

// route is one endpoint of the user API with the rule that guards it.
// The router is built from routeTable only, so that no endpoint exists
// without a rule (TestEveryRouteIsGuarded checks each one).
type route struct {
	method, pattern string
	perm            authz.Permission
	// object finds what the call acts on, for rules that grant on one's
	// own objects, and for a caller confined to a project, the project
	// of the VM or project it names (nil: nothing of anyone's). Where the object is known
	// only from the body or the store, the handler asks s.authorize
	// again with it (tokens).
	object func(r *http.Request) authz.Object
	// what names the action in a refusal (nil: the permission's words).
	what func(r *http.Request) string
	// act names the action in the audit trail: every route that changes
	// something has one ("vm.{action}" takes the path's action). Its
	// object is KIND/{name} (or {id}) of the path, KIND being act's
	// first part, unless the handler names it (audit.SetObject).
	act    string
	handle func(w http.ResponseWriter, r *http.Request) error
}

// ownedBy is the object of a route whose {name} is a user.
func ownedBy(r *http.Request) authz.Object { return authz.Object{Owner: r.PathValue("name")} }

// powerWords names a power action in a refusal: "stop VMs".
func powerWords(r *http.Request) string {
	switch a := r.PathValue("action"); a {
	case "start", "stop", "restart", "pause", "resume":
		return a + " VMs"
	}
	return ""
}

// routeTable is every route of the user API: method and pattern, the
// permission it needs (see internal/authz for which role has which), and
// how the object is found.
func (s *Server) routeTable() []route {
	return []route{
		{method: "GET", pattern: "/v1/vms", perm: authz.ReadVMs, handle: s.listVMs},
		{method: "POST", pattern: "/v1/vms", perm: authz.CreateVMs, act: "vm.create", handle: s.createVM},
		{method: "GET", pattern: "/v1/vms/{name}", perm: authz.ReadVMs, object: s.vmObject, handle: s.getVM},
		{method: "DELETE", pattern: "/v1/vms/{name}", perm: authz.DeleteVMs, act: "vm.delete", object: s.vmObject, handle: s.deleteVM},
		{method: "PATCH", pattern: "/v1/vms/{name}", perm: authz.ChangeVMs, act: "vm.set", object: s.vmObject, handle: s.updateVM},
		{method: "POST", pattern: "/v1/vms/{name}/{action}", perm: authz.PowerVMs, what: powerWords, act: "vm.{action}", object: s.vmObject, handle: s.vmAction},
		{method: "POST", pattern: "/v1/vms/{name}/attach", perm: authz.ChangeVMs, what: words("attach volumes"), act: "vm.attach", object: s.vmObject, handle: s.attachVolume},
		{method: "POST", pattern: "/v1/vms/{name}/detach", perm: authz.ChangeVMs, what: words("detach volumes"), act: "vm.detach", object: s.vmObject, handle: s.detachVolume},
		{method: "GET", pattern: "/v1/vms/{name}/logs", perm: authz.ReadVMLogs, object: s.vmObject, handle: s.vmLogs},
		{method: "GET", pattern: "/v1/vms/{name}/console", perm: authz.ConsoleVMs, act: "vm.console", object: s.vmObject, handle: s.vmConsole},
		{method: "POST", pattern: "/v1/vms/{name}/migrate", perm: authz.MoveVMs, act: "vm.migrate", object: s.vmObject, handle: s.migrateVM},
		{method: "GET", pattern: "/v1/vms/{name}/migration", perm: authz.ReadVMs, object: s.vmObject, handle: s.getMigration},
		{method: "DELETE", pattern: "/v1/vms/{name}/migration", perm: authz.MoveVMs, act: "vm.migrate-cancel", object: s.vmObject, handle: s.cancelMigration},
		{method: "POST", pattern: "/v1/vms/{name}/recover", perm: authz.MoveVMs, what: words("recover VMs"), act: "vm.recover", object: s.vmObject, handle: s.recoverVM},
		{method: "GET", pattern: "/v1/hosts", perm: authz.ReadHosts, handle: s.listHosts},
		{method: "GET", pattern: "/v1/hosts/{name}", perm: authz.ReadHosts, handle: s.getHost},
		{method: "POST", pattern: "/v1/hosts/{name}/drain", perm: authz.DrainHosts, act: "host.drain", handle: s.drainHost},
		{method: "GET", pattern: "/v1/hosts/{name}/drain", perm: authz.ReadHosts, handle: s.getDrain},
		{method: "POST", pattern: "/v1/hosts/{name}/resume", perm: authz.DrainHosts, act: "host.resume", handle: s.resumeHost},
		{method: "DELETE", pattern: "/v1/hosts/{name}", perm: authz.ManageCluster, what: words("remove hosts"), act: "host.remove", handle: s.removeHost},
		{method: "GET", pattern: "/v1/events", perm: authz.ReadCluster, handle: s.listEvents},
		{method: "GET", pattern: "/v1/networks", perm: authz.ReadCluster, handle: s.listNetworks},
		{method: "GET", pattern: "/v1/images", perm: authz.ReadCluster, handle: s.listImages},
		{method: "POST", pattern: "/v1/images/build", perm: authz.ManageImages, act: "image.build", handle: s.buildImage},
		{method: "PUT", pattern: "/v1/images/{name}", perm: authz.ManageImages, act: "image.import", handle: s.importImage},
		{method: "DELETE", pattern: "/v1/images/{name}", perm: authz.ManageImages, act: "image.delete", handle: s.deleteImage},
		{method: "POST", pattern: "/v1/cluster/tokens", perm: authz.ManageCluster, what: words("make join tokens"), act: "cluster.join-token", handle: s.createJoinToken},
		{method: "GET", pattern: "/v1/cluster/servers", perm: authz.ReadCluster, handle: s.listServers},
		{method: "GET", pattern: "/v1/cluster/status", perm: authz.ReadCluster, handle: s.clusterStatus},
		{method: "DELETE", pattern: "/v1/cluster/servers/{name}", perm: authz.ManageCluster, what: words("remove servers"), act: "server.remove", handle: s.removeServer},
		{method: "GET", pattern: "/v1/audit", perm: authz.ReadAudit, handle: s.listAudit},
		{method: "GET", pattern: "/v1/projects", perm: authz.ReadProjects, handle: s.listProjects},
		{method: "POST", pattern: "/v1/projects", perm: authz.ManageProjects, what: words("create projects"), act: "project.create", handle: s.createProject},
		{method: "GET", pattern: "/v1/projects/{name}", perm: authz.ReadProjects, object: projectObject, handle: s.getProject},
		{method: "DELETE", pattern: "/v1/projects/{name}", perm: authz.ManageProjects, object: projectObject, what: words("delete projects"), act: "project.delete", handle: s.deleteProject},
		{method: "GET", pattern: "/v1/volumes", perm: authz.ReadVolumes, handle: s.listVolumes},
		{method: "POST", pattern: "/v1/volumes", perm: authz.ManageVolumes, what: words("create volumes"), act: "volume.create", handle: s.createVolume},
		{method: "GET", pattern: "/v1/volumes/{name}", perm: authz.ReadVolumes, object: s.volumeObject, handle: s.getVolume},
		{method: "DELETE", pattern: "/v1/volumes/{name}", perm: authz.ManageVolumes, what: words("delete volumes"), act: "volume.delete", object: s.volumeObject, handle: s.deleteVolume},
		{method: "POST", pattern: "/v1/volumes/{name}/resize", perm: authz.ManageVolumes, what: words("resize volumes"), act: "volume.resize", object: s.volumeObject, handle: s.resizeVolume},
		{method: "GET", pattern: "/v1/pools", perm: authz.ReadCluster, handle: s.listPools},
		{method: "GET", pattern: "/v1/pools/{name}", perm: authz.ReadCluster, handle: s.getPool},
		{method: "POST", pattern: "/v1/pools", perm: authz.ManagePools, act: "pool.create", handle: s.createPool},
		{method: "DELETE", pattern: "/v1/pools/{name}", perm: authz.ManagePools, act: "pool.delete", handle: s.deletePool},
		{method: "GET", pattern: "/v1/users", perm: authz.ManageUsers, what: words("list users"), handle: s.listUsers},
		{method: "POST", pattern: "/v1/users", perm: authz.ManageUsers, what: words("create users"), act: "user.create", handle: s.createUser},
		{method: "GET", pattern: "/v1/users/{name}", perm: authz.ManageUsers, object: ownedBy, what: words("see other users"), handle: s.getUser},
		{method: "DELETE", pattern: "/v1/users/{name}", perm: authz.ManageUsers, what: words("delete users"), act: "user.delete", handle: s.deleteUser},
		{method: "PUT", pattern: "/v1/users/{name}/password", perm: authz.ManageUsers, object: ownedBy, what: words("set other users' passwords"), act: "user.password", handle: s.setPassword},
		// Tokens: anyone has their own; whose a token is, the handlers
		// learn from the body or the store and check then.
		{method: "GET", pattern: "/v1/tokens", perm: authz.UseTokens, object: self, handle: s.listTokens},
		{method: "POST", pattern: "/v1/tokens", perm: authz.UseTokens, object: self, act: "token.create", handle: s.createToken},
		{method: "DELETE", pattern: "/v1/tokens/{id}", perm: authz.UseTokens, object: self, act: "token.revoke", handle: s.revokeToken},
	}
}

func words(w string) func(*http.Request) string { return func(*http.Request) string { return w } }

// self is the object of a route on the caller's own things.
func self(r *http.Request) authz.Object {
	id, _ := authz.FromContext(r.Context())
	return authz.Object{Owner: id.User}
}

// routes builds the router from the table: each route first checks its
// rule for the caller ServeHTTP authenticated.
func (s *Server) routes() {
	for _, rt := range s.routeTable() {
		if !authz.Known(rt.perm) {
			panic("route " + rt.method + " " + rt.pattern + " has no rule")
		}
		s.mux.HandleFunc(rt.method+" "+rt.pattern, func(w http.ResponseWriter, r *http.Request) {
			req := authz.Request{Perm: rt.perm}
			if rt.object != nil {
				req.Object = rt.object(r)
			}
			if rt.what != nil {
				req.What = rt.what(r)
			}
			var entry *audit.Entry
			if rt.act != "" {
				var ctx context.Context
				ctx, entry = s.beginAudit(r, rt.act)
				r = r.WithContext(ctx)
			}
			err := s.authorize(r, req)
			if err == nil {
				err = rt.handle(w, r)
			}
			if err != nil {
				s.writeError(w, r, err)
			}
			if entry != nil {
				s.audit.Record(entry.Finish(err))
			}
		})
	}
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.writeError(w, r, api.Errorf(api.ErrNotFound, "no such API endpoint: %s %s", r.Method, r.URL.Path))
	})
}

// authorize decides whether the caller of r may do req.
func (s *Server) authorize(r *http.Request, req authz.Request) error {
	id, ok := authz.FromContext(r.Context())
	if !ok {
		return api.Errorf(api.ErrUnauthorized, "the request was not authenticated")
	}
	return authz.Decide(id, req)
}

// beginAudit starts the audit record of a call of action act.
func (s *Server) beginAudit(r *http.Request, act string) (context.Context, *audit.Entry) {
	id, _ := authz.FromContext(r.Context())
	act = strings.ReplaceAll(act, "{action}", r.PathValue("action"))
	kind, _, _ := strings.Cut(act, ".")
	object := kind
	if name := r.PathValue("name") + r.PathValue("id"); name != "" {
		object += "/" + name
	}
	remote := r.RemoteAddr
	if remote == "" || remote == "@" {
		remote = "local"
	}
	return audit.Begin(r.Context(), id, remote, act, object)
}
