# Meshcast: the README's two commands are `make demo` and `make test`. Both install what they need, idempotently:
# Debian packages with apt-get (only those missing), Python packages into .venv from pyproject.toml (only when
# pyproject.toml changed since the last install).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# etcd-server/etcd-client: the store and its tests; curl: real-client checks; iproute2: network namespaces.
DEB_PACKAGES := etcd-server etcd-client curl iproute2 ca-certificates
# Only `make test` needs these: h2load, a real HTTP/2 load generator, in the data-plane tests; BIRD 2, the router
# the anycast tests peer with, and gobgpd, a second peer that reads what was received (gobgp global rib -j); both
# run in network namespaces only, no system service is used (gobgpd's unit starts only if /etc/gobgpd.conf exists).
TEST_PACKAGES := nghttp2-client bird2 gobgpd
# Only `make bench` needs these: load generators and the reference proxies the sidecars are measured against.
BENCH_PACKAGES := wrk nghttp2-client haproxy nginx-light
PYTEST_ARGS ?=
# Test files run on this many workers, each file whole on one (its module fixtures set up once). The integration
# tests spend most of their time waiting on real processes, so two workers halve the suite on two cores.
TEST_JOBS ?= 2

.PHONY: demo test lint unit bench deps clean

demo: deps $(STAMP)
	$(BIN)/meshcast demo $(DEMO_ARGS)

test: deps $(STAMP) lint
	@$(MAKE) --no-print-directory DEB_PACKAGES="$(TEST_PACKAGES)" deps
	$(BIN)/pytest -n $(TEST_JOBS) --dist loadfile $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

bench: deps $(STAMP)
	@$(MAKE) --no-print-directory DEB_PACKAGES="$(BENCH_PACKAGES)" deps
	$(BIN)/python bench/bench_certs.py
	$(BIN)/python bench/bench_push.py
	$(BIN)/python bench/bench_http1.py
	$(BIN)/python bench/bench_proxy.py
	$(BIN)/python bench/bench_rss.py
	$(BIN)/python bench/bench_federation.py

deps:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if ! $(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1; then missing="$$missing python3-venv"; fi; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip >/dev/null
	$(BIN)/pip install -q -e '.[test]'
	@touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .demo .bench
