# edgefleet: `make demo` and `make test` work on a fresh Debian/Ubuntu machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: setup system-deps test lint typecheck pytest demo bench soak schemas zoo clean

# --- set-up -------------------------------------------------------------------
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "edgefleet needs Python >= 3.11")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { echo "python3 -m venv failed: install python3-venv (apt-get install python3-venv)"; exit 1; }
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[cpu,hub,dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

# KServe's own Python SDK for tests/edge_agent/test_kserve_sdk.py, in a venv of its own: in the project's venv
# it would pull ~30 packages and downgrade protobuf. Best effort: without it those tests are skipped, saying so.
KSERVE_VENV := .venv-kserve
KSERVE_STAMP := $(KSERVE_VENV)/.installed-kserve-0.21.0
$(KSERVE_STAMP):
	@test -x $(KSERVE_VENV)/bin/python || $(PYTHON) -m venv $(KSERVE_VENV)
	@if $(KSERVE_VENV)/bin/pip install -q 'kserve==0.21.0'; then touch $@; \
	else echo "note: could not install kserve==0.21.0 into $(KSERVE_VENV); the KServe SDK tests will be skipped"; fi

setup: $(STAMP) system-deps $(KSERVE_STAMP)

# Tests and the demo start their own mosquitto as a child process: it must be installed. faketime is
# optional (the clock-jump fault test is skipped without it, saying so); wrk is for `make bench`. chromium
# is optional too: Playwright (dev extra) drives Debian's build for the dashboard's browser tests.
system-deps:
	@if command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's mosquitto"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null; \
	else \
		echo "mosquitto is missing: run 'sudo apt-get install mosquitto faketime' (Debian/Ubuntu), then retry"; exit 1; \
	fi
	@if command -v faketime >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		{ apt-get update -qq >/dev/null 2>&1; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime >/dev/null 2>&1; } \
			|| echo "note: could not install faketime; the clock-jump fault test will be skipped"; \
	else \
		echo "note: faketime is missing (sudo apt-get install faketime); the clock-jump fault test will be skipped"; \
	fi
	@if command -v chromium >/dev/null 2>&1 || test -x /usr/bin/chromium; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's chromium (the dashboard's browser tests)"; \
		{ apt-get update -qq >/dev/null 2>&1; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1; } \
			|| echo "note: could not install chromium; the dashboard's browser tests will be skipped"; \
	else \
		echo "note: chromium is missing (sudo apt-get install chromium); the dashboard's browser tests will be skipped"; \
	fi

# --- checks -------------------------------------------------------------------
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy protocols models edge_agent cloud_hub deploy

pytest: setup
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

test: setup lint typecheck pytest

# --- the demo and benchmarks ----------------------------------------------------
demo: setup
	$(PY) -m deploy.local.demo $(DEMO_ARGS)

bench: setup
	$(PY) -m bench

# Not in CI (~10 min + ~15 min): the soak benchmark, then the long fault-injection variants, which
# `make test` skips (they run only with EDGEFLEET_SOAK=1). SOAK_ARGS="--minutes 3" for a shorter soak.
soak: setup
	$(PY) -m bench.soak $(SOAK_ARGS)
	EDGEFLEET_SOAK=1 $(VENV)/bin/pytest -q -m soak tests/faults

# --- maintenance ----------------------------------------------------------------
schemas: $(STAMP)
	$(PY) -m protocols.schema --write protocols/schemas

# Re-export the zoo models (needs torch: pip install torch==2.13.0) and re-sign them.
zoo: $(STAMP)
	$(PY) -m models.zoo.export

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info
