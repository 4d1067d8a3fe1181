# Shoal: two commands on a fresh Debian machine, as root:
#   make up    install what is needed, build, run a single-node Shoal with a demo VM
#   make test  install what is needed and run every test

export PATH := /usr/local/go/bin:$(PATH)
GO ?= go
DATA_DIR ?= /var/lib/shoal
# Debian packages Shoal needs on a host and for its tests.
DEBS = qemu-system-x86 qemu-utils qemu-block-extra busybox-static linux-image-cloud-amd64 \
       genisoimage iproute2 etcd-server ca-certificates wget util-linux tgt \
       ceph-mon ceph-mgr ceph-osd ceph-common

.PHONY: up test build deps bench soak clean

up: deps build
	bin/shoal up --data-dir $(DATA_DIR)

build: bin/shoal

bin/shoal: $(shell find cmd internal -name '*.go' -o -name '*.sh' -o -name '*.cgi' 2>/dev/null) go.mod go.sum
	$(GO) build -o bin/shoal ./cmd/shoal

# deps installs the Debian packages that are missing (nothing if all are there).
deps:
	@missing=$$(for p in $(DEBS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if ! command -v $(GO) >/dev/null; then missing="$$missing golang-go"; fi; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# -p 1: one package at a time. The lab and CLI integration tests each boot
# many emulated (TCG) guests; run side by side on two cores, they starve
# each other's guests and migrations.
test: deps
	$(GO) vet ./...
	$(GO) test -count=1 -p 1 -timeout 25m ./...
	@for f in $(FUZZ); do \
		echo "fuzz $$f for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$${f##*:}$$" -fuzztime $(FUZZTIME) ./$${f%%:*} || exit 1; \
	done

# Fuzz targets (PACKAGE:FUNCTION) that 'make test' runs for FUZZTIME each:
# no input may make them fail (a 500, a panic, a wrong acceptance).
FUZZ = internal/api:FuzzParseSize internal/api:FuzzValidateName internal/server:FuzzAPIRequests internal/agentapi:FuzzAgentAPI
FUZZTIME ?= 5s

bench: deps build
	$(GO) test -run '^$$' -bench . -benchtime 5x -timeout 30m ./cmd/shoal/

# soak: the failover soak, 30 randomized faults in a lab (about 30 min).
soak: deps build
	SHOAL_SOAK=$${SHOAL_SOAK:-30} $(GO) test -count=1 -run 'TestLabSoak$$' -v -timeout 90m ./internal/lab/

clean:
	rm -rf bin
