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
	$(PY) -m pip install -q --retries 10 --timeout 60 --upgrade pip
	$(PY) -m pip install -q --retries 10 --timeout 60 -e '.[dev]'
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
tools: ## build kube-apiserver, controller-manager, scheduler, kubectl, etcd, helm, prometheus from Go modules (cached)
	bash hack/build-tools.sh

# ---------------------------------------------------------------- main job
NODES ?= 5
BEHAVIOR ?= converge
TOPOLOGY ?= ring
.PHONY: run
run: venv ## run a local loop: NODES=5 BEHAVIOR=converge TOPOLOGY=ring
	$(VENV)/bin/reactive-loop run --nodes $(NODES) --behavior $(BEHAVIOR) --topology $(TOPOLOGY) --view-port 8090

.PHONY: bench
bench: venv ## node benchmarks: round trip vs aiohttp/asyncio, RSS, convergence rounds (bench/README.md)
	$(PY) bench/roundtrip.py --json
	$(PY) bench/convergence.py --plot bench/results/convergence.png

.PHONY: bench-kind
bench-kind: venv ## operator and node pods on the kind cluster (make kind-up deploy): apply→looping N=10/50, create→Ready, steady PATCH/s, memory
	$(PY) bench/kind_bench.py --context $(KIND_CONTEXT) --nodes 10 50 --loops 20 --window 30 --json

# ---------------------------------------------------------------- checks
DASHBOARD_GENERATOR := charts/reactive-loop/dashboards/reactive_loop_dashboard.py
SHELL_SCRIPTS = $(sort hack/kind/quirks.sh $(shell grep -rlE '^\#!(/usr/bin/env bash|/bin/(ba)?sh)' hack))

.PHONY: lint
lint: venv ## ruff, import layering, shellcheck of hack/
	$(VENV)/bin/ruff check node operator tests bench $(DASHBOARD_GENERATOR)
	$(VENV)/bin/ruff format --check node operator tests bench $(DASHBOARD_GENERATOR)
	$(PY) $(DASHBOARD_GENERATOR) --check
	$(VENV)/bin/lint-imports
	$(VENV)/bin/shellcheck $(SHELL_SCRIPTS)

.PHONY: typecheck
typecheck: venv ## mypy --strict
	$(VENV)/bin/mypy node/reactive_node operator/reactive_operator tests bench $(DASHBOARD_GENERATOR)

.PHONY: dashboard
dashboard: venv ## regenerate charts/reactive-loop/dashboards/reactive-loop.json from its Python generator
	$(PY) $(DASHBOARD_GENERATOR)

.PHONY: checkov
checkov: venv tools ## checkov over the rendered chart and the operator's children (own venv under the cache; exceptions: docs/security.md)
	CACHE=$(CACHE) HELM=$(TOOLS_BIN)/helm PROJECT_PY=$(CURDIR)/$(PY) hack/checkov.sh

.PHONY: test
test: system-deps venv tools lint typecheck ## everything: lint, types, all test tiers (local cluster, then the kind quickstart)
	$(MAKE) cluster-up
	@status=0; $(PY) -m pytest -p no:cacheprovider tests --ignore=tests/kind --ignore=tests/images || status=$$?; \
	if [ "$$CI" = "true" ]; then $(MAKE) cluster-down; fi; \
	$(MAKE) test-kind || status=$$?; exit $$status

.PHONY: test-kind
test-kind: ## the kind tier: the README's quickstart (kind-up deploy demo), the monitoring stack, then every test with pods
	@status=0; $(MAKE) kind-up deploy demo || status=$$?; \
	if [ $$status -ne 0 ]; then echo "FAILED: the kind quickstart (make kind-up deploy demo) did not come up" >&2; \
	elif ! $(MAKE) kind-monitoring; then status=1; echo "FAILED: make kind-monitoring (Prometheus Operator on kind)" >&2; \
	else KIND_CONTEXT=$(KIND_CONTEXT) IMAGE_TAG=$(IMAGE_TAG) $(PY) -m pytest -p no:cacheprovider tests/kind tests/images || status=$$?; fi; \
	if [ "$$CI" = "true" ]; then $(MAKE) kind-down; fi; exit $$status

# ---------------------------------------------------------------- local cluster
.PHONY: cluster-up
cluster-up: venv tools system-deps ## start the local control plane (etcd, apiserver, controller manager; no node) in .local-cluster/
	PYTHONPATH=tests $(PY) -m localcluster up

.PHONY: cluster-down
cluster-down: ## stop the local control plane and remove everything it made
	@if [ -x $(PY) ]; then PYTHONPATH=tests $(PY) -m localcluster down; else echo "no venv: nothing to do"; fi

.PHONY: cluster-status
cluster-status: ## say what of the local cluster runs
	PYTHONPATH=tests $(PY) -m localcluster status

# ---------------------------------------------------------------- kind
# The README's quickstart: `make kind-up deploy demo`. With Docker and a
# registry this is plain kind, docker build and helm. Where no registry can be
# reached (hack/kind/quirks.sh), the kind node image and the Dockerfiles' base
# image are built here from Debian packages and Go modules, and where no Docker
# daemon runs a private one is started (hack/kind/docker.sh); docs/testing.md.
KIND_CLUSTER ?= reactive-loop
KIND_CONTEXT := kind-$(KIND_CLUSTER)
IMAGE_TAG ?= 0.1.0
RELEASE ?= reactive-loop
RELEASE_NAMESPACE ?= reactive-loop-system
MONITORING_NAMESPACE ?= monitoring
K8S_VERSION := $(shell . hack/versions.env && echo $$K8S_VERSION)
# Empty: kind's own default node image. Set where no registry answers.
KIND_NODE_IMAGE ?= $(shell . hack/kind/quirks.sh && { rl_registry_reachable || echo reactive-loop/kind-node:$(K8S_VERSION); })
# A daemon without a default bridge (hack/kind/docker.sh) builds on the host network.
DOCKER_BUILD_FLAGS ?= $(shell docker network inspect bridge >/dev/null 2>&1 || echo --network host)
HELM_DEPLOY_FLAGS := --kube-context $(KIND_CONTEXT) --namespace $(RELEASE_NAMESPACE) --create-namespace --wait \
	--set operator.image.repository=reactive-loop-operator --set operator.image.tag=$(IMAGE_TAG) \
	--set node.image.repository=reactive-loop-node --set node.image.tag=$(IMAGE_TAG)

.PHONY: kind-deps
kind-deps: ## Debian packages the kind targets need, only those missing (docker.io only where no Docker runs)
	bash hack/kind/deps.sh

.PHONY: docker
docker: kind-deps ## make sure a Docker daemon answers (starts a private one only where none runs)
	bash hack/kind/docker.sh up

.PHONY: kind-tools
kind-tools: ## build kind, kubectl and helm from their Go modules (cached)
	bash hack/build-tools.sh kind kubernetes helm

.PHONY: kind-up
kind-up: docker kind-tools ## create the kind cluster of kind-config.yaml (1 control plane, 2 workers)
	@node_image="$(strip $(KIND_NODE_IMAGE))"; \
	if kind get clusters 2>/dev/null | grep -qx '$(KIND_CLUSTER)'; then echo "kind cluster $(KIND_CLUSTER) exists"; exit 0; fi; \
	if [ -n "$$node_image" ]; then \
	  bash hack/build-tools.sh kind-node && KIND_NODE_IMAGE="$$node_image" bash hack/kind/node-image.sh >/dev/null || exit 1; \
	fi; \
	set -x; kind create cluster --name $(KIND_CLUSTER) --config kind-config.yaml $${node_image:+--image $$node_image} --wait 180s --retain \
	|| { set +x; echo "kind create failed: logs in $(CACHE)/kind/logs" >&2; kind export logs --name $(KIND_CLUSTER) $(CACHE)/kind/logs >/dev/null 2>&1; \
	     docker exec $(KIND_CLUSTER)-control-plane journalctl -u kubelet -u containerd --no-pager 2>/dev/null | tail -40 >&2; \
	     kind delete cluster --name $(KIND_CLUSTER); exit 1; }
	kubectl --context $(KIND_CONTEXT) get nodes -o wide

.PHONY: kind-down
kind-down: ## delete the kind cluster (and stop the private Docker daemon if one was started)
	-kind delete cluster --name $(KIND_CLUSTER)
	bash hack/kind/docker.sh down

.PHONY: images
images: docker ## build the node and operator images (docker)
	bash hack/kind/python-base.sh >/dev/null
	docker build $(DOCKER_BUILD_FLAGS) -f node/Dockerfile -t reactive-loop-node:$(IMAGE_TAG) .
	docker build $(DOCKER_BUILD_FLAGS) -f operator/Dockerfile -t reactive-loop-operator:$(IMAGE_TAG) .

.PHONY: kind-load
kind-load: images ## load both images into the kind cluster's nodes
	kind load docker-image --name $(KIND_CLUSTER) reactive-loop-node:$(IMAGE_TAG) reactive-loop-operator:$(IMAGE_TAG)

.PHONY: deploy
deploy: kind-load ## helm install the chart (CRD, operator, RBAC, dashboard) into the kind cluster
	helm upgrade --install $(RELEASE) charts/reactive-loop $(HELM_DEPLOY_FLAGS)
	kubectl --context $(KIND_CONTEXT) -n $(RELEASE_NAMESPACE) rollout status deployment/$(RELEASE) --timeout=180s

.PHONY: demo
demo: ## apply examples/ (converge, token and signed loops) and show them
	kubectl --context $(KIND_CONTEXT) apply -f examples/
	kubectl --context $(KIND_CONTEXT) wait rloop --all --for=condition=Ready --timeout=300s
	kubectl --context $(KIND_CONTEXT) get rloop,pods -o wide

.PHONY: monitoring
monitoring: ## kube-prometheus-stack + our PodMonitor, ServiceMonitor, rules and Grafana dashboard
	helm repo add prometheus-community https://prometheus-community.github.io/helm-charts --force-update
	helm upgrade --install kube-prometheus-stack prometheus-community/kube-prometheus-stack \
	  --kube-context $(KIND_CONTEXT) --namespace $(MONITORING_NAMESPACE) --create-namespace --wait \
	  --set grafana.sidecar.dashboards.enabled=true \
	  --set grafana.sidecar.dashboards.searchNamespace=ALL \
	  --set grafana.sidecar.dashboards.folderAnnotation=grafana_folder \
	  --set grafana.sidecar.dashboards.provider.foldersFromFilesStructure=true
	helm upgrade --install $(RELEASE) charts/reactive-loop $(HELM_DEPLOY_FLAGS) \
	  -f charts/reactive-loop/ci/monitoring-values.yaml \
	  --set-string 'node.scraper.namespaceLabels.kubernetes\.io/metadata\.name=$(MONITORING_NAMESPACE)'
	@echo "Grafana: kubectl -n $(MONITORING_NAMESPACE) port-forward svc/kube-prometheus-stack-grafana 3000:80  (admin / prom-operator)"
	@echo "Prometheus: kubectl -n $(MONITORING_NAMESPACE) port-forward svc/kube-prometheus-stack-prometheus 9090"

.PHONY: kind-monitoring
kind-monitoring: ## what CI runs instead of `make monitoring`: the Prometheus Operator and Prometheus built here from Go modules (no registry)
	bash hack/kind/monitoring.sh
