# reactive-loop — every set-up step lives here, so a fresh machine needs only
#   make run    (local mode: N nodes as processes on 127.0.0.1)
#   make test   (lint, types and every test tier, local cluster included)
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
CACHE ?= $(HOME)/.cache/reactive-loop
TOOLS_BIN := $(CACHE)/bin
export PATH := $(CURDIR)/$(VENV)/bin:$(TOOLS_BIN):$(PATH)

APT_PACKAGES := iproute2 iptables openssl prometheus chromium procps psmisc util-linux

.PHONY: help
help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  %-16s %s\n", $$1, $$2}'

# ---------------------------------------------------------------- set-up
$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

.PHONY: venv
venv: $(VENV)/.installed ## create .venv with the project and its dev tools

.PHONY: system-deps
system-deps: ## install the Debian packages the tests use (root, apt-get)
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

.PHONY: tools
tools: ## build kube-apiserver, controller-manager, scheduler, kubectl, etcd, helm from Go modules (cached)
	bash hack/build-tools.sh

# ---------------------------------------------------------------- main job
NODES ?= 5
BEHAVIOR ?= converge
TOPOLOGY ?= ring
.PHONY: run
run: venv ## run a local loop: NODES=5 BEHAVIOR=converge TOPOLOGY=ring
	$(VENV)/bin/reactive-loop run --nodes $(NODES) --behavior $(BEHAVIOR) --topology $(TOPOLOGY) --view-port 8090

# ---------------------------------------------------------------- checks
.PHONY: lint
lint: venv ## ruff and import layering
	$(VENV)/bin/ruff check node operator tests bench
	$(VENV)/bin/ruff format --check node operator tests bench

.PHONY: typecheck
typecheck: venv ## mypy --strict
	$(VENV)/bin/mypy node/reactive_node operator/reactive_operator tests bench

.PHONY: test
test: system-deps venv tools lint typecheck ## everything: lint, types, all test tiers (starts the local cluster)
	$(MAKE) cluster-up
	$(PY) -m pytest -p no:cacheprovider tests

# ---------------------------------------------------------------- local cluster
.PHONY: cluster-up
cluster-up: venv tools system-deps ## start the local Kubernetes cluster (.local-cluster/)
	$(PY) -m localcluster up

.PHONY: cluster-down
cluster-down: ## stop the local cluster and remove everything it made
	@if [ -x $(PY) ]; then $(PY) -m localcluster down; else echo "no venv: nothing to do"; fi

.PHONY: cluster-status
cluster-status: ## say what of the local cluster runs
	$(PY) -m localcluster status
