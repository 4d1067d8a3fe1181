package main

import (
	"net/http"
	"reflect"
	"strings"
	"testing"
)

// TestIntegrationBadInput: each bad request exits non-zero with one line
// that says what is wrong, and changes nothing.
func TestIntegrationBadInput(t *testing.T) {
	l := newLab(t)
	l.start()
	l.mustShoal("vm", "create", "exists", "--image", "tiny", "--start")
	l.mustShoal("vm", "create", "idle", "--image", "tiny")
	before := l.vmNames()
	cases := []struct {
		name string
		args []string
		want string // in the message
	}{
		{"uppercase name", []string{"vm", "create", "Web1", "--image", "tiny"}, "must start with a lower-case letter"},
		{"bad character", []string{"vm", "create", "web_1", "--image", "tiny"}, "may hold only"},
		{"too long name", []string{"vm", "create", strings.Repeat("a", 64), "--image", "tiny"}, "too long"},
		{"trailing dash", []string{"vm", "create", "web-", "--image", "tiny"}, "must not end"},
		{"zero memory", []string{"vm", "create", "m0", "--image", "tiny", "--memory", "0"}, "greater than zero"},
		{"bad unit", []string{"vm", "create", "m1", "--image", "tiny", "--memory", "12Q"}, "unknown unit"},
		{"not a size", []string{"vm", "create", "m2", "--image", "tiny", "--memory", "lots"}, "not a number"},
		{"too much memory", []string{"vm", "create", "m3", "--image", "tiny", "--memory", "100T"}, "no host fits"},
		{"tiny memory", []string{"vm", "create", "m4", "--image", "tiny", "--memory", "1M"}, "at least"},
		{"zero disk", []string{"vm", "create", "d0", "--image", "tiny", "--disk", "0"}, "greater than zero"},
		{"disk below image", []string{"vm", "create", "d1", "--image", "tiny", "--disk", "1M"}, "smaller than image"},
		{"too many cpus", []string{"vm", "create", "c1", "--image", "tiny", "--cpus", "1000"}, "out of range"},
		{"unknown image", []string{"vm", "create", "i1", "--image", "nope"}, `image "nope" not found`},
		{"no image", []string{"vm", "create", "i2"}, "image is required"},
		{"unknown network", []string{"vm", "create", "n1", "--image", "tiny", "--network", "nope"}, `network "nope" not found`},
		{"unknown pool", []string{"vm", "create", "p1", "--image", "tiny", "--pool", "nope"}, `pool "nope" not found`},
		{"unknown host", []string{"vm", "create", "h1", "--image", "tiny", "--host", "nope"}, `host "nope" not found`},
		{"duplicate name", []string{"vm", "create", "exists", "--image", "tiny"}, "already exists"},
		{"priority without ha", []string{"vm", "create", "p1", "--image", "tiny", "--priority", "high"}, "--priority needs --ha"},
		{"set bad priority", []string{"vm", "set", "exists", "--ha", "--priority", "urgent"}, `priority "urgent" is invalid: use high, medium or low`},
		{"set nothing", []string{"vm", "set", "exists"}, "nothing to change"},
		{"set tiny memory", []string{"vm", "set", "exists", "--memory", "16M"}, "memory 16M is invalid: use whole MiB, at least 32M"},
		{"set too many cpus", []string{"vm", "set", "idle", "--cpus", "65"}, "cpus 65 is out of range: use 1 to 64"},
		{"set too much for its host", []string{"vm", "set", "exists", "--memory", "100T"}, `vm "exists" cannot have 1 vCPU, 100T on host`},
		{"set unknown", []string{"vm", "set", "ghost", "--ha"}, `vm "ghost" not found`},
		{"start running", []string{"vm", "start", "exists"}, "already running"},
		{"stop stopped", []string{"vm", "stop", "idle"}, "already stopped"},
		{"pause stopped", []string{"vm", "pause", "idle"}, "only a running VM"},
		{"resume running", []string{"vm", "resume", "exists"}, "not paused"},
		{"delete running", []string{"vm", "delete", "exists"}, "--force"},
		{"show unknown", []string{"vm", "show", "ghost"}, `vm "ghost" not found`},
		{"delete unknown", []string{"vm", "delete", "ghost"}, `vm "ghost" not found`},
		{"recover unknown", []string{"vm", "recover", "ghost"}, `vm "ghost" not found`},
		{"recover no name", []string{"vm", "recover"}, "accepts 1 arg"},
		{"recover on a live host", []string{"vm", "recover", "exists"}, "use 'shoal vm migrate'"},
		{"remove unknown server", []string{"cluster", "remove-server", "ghost"}, `no server called "ghost"`},
		{"remove bad server name", []string{"cluster", "remove-server", "Ghost"}, "must start with a lower-case letter"},
		{"wrong token", []string{"--token", "wrong", "vm", "list"}, "invalid API token"},
		{"bad output", []string{"vm", "list", "-o", "yaml"}, "unknown output format"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, errOut, err := l.shoal(c.args...)
			if err == nil {
				t.Fatalf("exit 0; stdout %q", out)
			}
			msg := strings.TrimSpace(errOut)
			if strings.Count(msg, "\n") != 0 || !strings.HasPrefix(msg, "error: ") || !strings.Contains(msg, c.want) {
				t.Fatalf("message %q, want one line containing %q", msg, c.want)
			}
		})
	}
	if after := l.vmNames(); !reflect.DeepEqual(after, before) {
		t.Fatalf("vm list changed: %v -> %v", before, after)
	}

	// The raw API: no token is 401, malformed JSON is 400 (never 500).
	sock := l.dir + "/data/shoal.sock"
	token := l.token()
	raw := []struct {
		name, method, path, body, token string
		want                            int
	}{
		{"no token", "GET", "/v1/vms", "", "", http.StatusUnauthorized},
		{"wrong token", "GET", "/v1/vms", "", "x", http.StatusUnauthorized},
		{"malformed json", "POST", "/v1/vms", "{nope", token, http.StatusBadRequest},
		{"wrong type", "POST", "/v1/vms", `{"name": 5}`, token, http.StatusBadRequest},
		{"unknown field", "POST", "/v1/vms", `{"name":"x","image":"tiny","colour":"red"}`, token, http.StatusBadRequest},
		{"empty body", "POST", "/v1/vms", ``, token, http.StatusBadRequest},
		{"trailing data", "POST", "/v1/vms", `{"name":"x","image":"tiny"} {}`, token, http.StatusBadRequest},
		{"unknown action", "POST", "/v1/vms/exists/explode", ``, token, http.StatusBadRequest},
		{"unknown endpoint", "GET", "/v1/nothing", ``, token, http.StatusNotFound},
	}
	for _, c := range raw {
		t.Run("api "+c.name, func(t *testing.T) {
			req, _ := http.NewRequest(c.method, "http://shoal"+c.path, strings.NewReader(c.body))
			if c.token != "" {
				req.Header.Set("Authorization", "Bearer "+c.token)
			}
			resp, err := unixClient(sock).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != c.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, c.want)
			}
		})
	}
	if after := l.vmNames(); !reflect.DeepEqual(after, before) {
		t.Fatalf("vm list changed: %v -> %v", before, after)
	}
	l.mustShoal("vm", "delete", "--force", "exists")
	l.mustShoal("vm", "delete", "idle")
}
