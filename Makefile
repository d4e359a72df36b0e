# Every target installs what it needs: Debian packages (as root), the virtual environment, the project.
# Stamps under .build/ make a second run fast; `make clean-setup` forgets them.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := apache2 apache2-doc wget gcc make libc6-dev iproute2 iptables haproxy wrk procps
PYTEST_ARGS ?=

.PHONY: setup demo test bench lint clean-setup help

help:
	@echo "make demo   - build everything, start a protected server behind the gateway, attack it, show the heal"
	@echo "make test   - the whole test suite (needs root: namespaces, ptrace)"
	@echo "make bench  - the long measurements (bench/), results in bench/results/"
	@echo "make lint   - ruff and mypy"

.build/apt.stamp:
	@mkdir -p .build
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "error: Debian packages missing:$$missing; run 'make' as root or install them with apt-get" >&2; exit 1; fi; \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@touch $@

$(VENV)/.installed: pyproject.toml .build/apt.stamp
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "error: Python >= 3.11 is needed, found " + sys.version.split()[0])'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { echo "error: '$(PYTHON) -m venv' failed: on Debian install python3-venv" >&2; exit 1; }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) -m demo

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	$(PY) -m bench

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy sead vproxy healer protocols netns

clean-setup:
	rm -rf .build $(VENV)
