#!/usr/bin/env bash
# The monitoring stack of the kind tier: the real Prometheus Operator and one
# Prometheus it manages, in the namespace `monitoring` of the kind cluster.
#
#   hack/kind/monitoring.sh        (make kind-monitoring; run by tests/kind/test_monitoring.py)
#
# A user runs `make monitoring` (kube-prometheus-stack from its Helm
# repository). This machine reaches no container registry, so nothing of that
# can be pulled; instead the same parts are built here:
#   - the Prometheus Operator and its config reloader v$PROMETHEUS_OPERATOR_VERSION
#     and Prometheus (module v$PROMETHEUS_VERSION), built from their Go modules by
#     hack/build-tools.sh (cached), each alone in a scratch image (static
#     binaries; nothing else is read: no /etc/passwd, no CA bundle, no shell);
#   - `kind load` of the three images (kind skips nodes that hold them);
#   - the operator's CRDs of the same version (server-side apply: the
#     Prometheus CRD is too large for a client-side apply's annotation);
#   - hack/kind/monitoring/*.yaml: the namespace (PSS restricted), the
#     operator, and a Prometheus that selects PodMonitors, ServiceMonitors and
#     PrometheusRules labelled `release: kube-prometheus-stack` in every
#     namespace, as kube-prometheus-stack's does.
# Idempotent: with everything in place it only checks (a few seconds). The
# stack stays for later runs; `kubectl delete ns monitoring` removes it (the
# CRDs and the two ClusterRoles `reactive-loop-ci-*` stay).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../versions.env
source "$here/../versions.env"
CACHE="${RL_CACHE:-$HOME/.cache/reactive-loop}"
BIN="$CACHE/bin"
export PATH="$BIN:$PATH"
CLUSTER="${KIND_CLUSTER:-reactive-loop}"
CONTEXT="kind-$CLUSTER"
NAMESPACE=monitoring
MANIFESTS="$here/monitoring"
CRDS="$CACHE/prometheus-operator-crd-$PROMETHEUS_OPERATOR_VERSION"
OPERATOR_IMAGE="reactive-loop/prometheus-operator:$PROMETHEUS_OPERATOR_VERSION"
RELOADER_IMAGE="reactive-loop/prometheus-config-reloader:$PROMETHEUS_OPERATOR_VERSION"
PROMETHEUS_IMAGE="reactive-loop/prometheus:$PROMETHEUS_VERSION"
# The Prometheus CR (monitoring/prometheus.yaml) is named `main`.
STATEFULSET=prometheus-main
INPUTS_LABEL=dev.reactive-loop.monitoring.inputs
export DOCKER_BUILDKIT=0 # the classic builder: no buildx plugin is needed
start=$SECONDS

log() { printf '[monitoring] %3ss %s\n' "$((SECONDS - start))" "$*" >&2; }
die() { log "$*"; exit 1; }
k() { kubectl --context "$CONTEXT" "$@"; }

# What the operator and Prometheus report when the stack does not come up.
diagnose() {
  log "diagnostics:"
  k -n "$NAMESPACE" get deploy,statefulset,pods,prometheus -o wide >&2 || true
  k -n "$NAMESPACE" logs deploy/prometheus-operator --tail=30 >&2 || true
  k -n "$NAMESPACE" get events --sort-by=.lastTimestamp 2>/dev/null | tail -15 >&2 || true
}

preflight() {
  bash "$here/../build-tools.sh" prometheus prometheus-operator >&2
  [[ -d $CRDS ]] || die "no CRDs in $CRDS (hack/build-tools.sh prometheus-operator)"
  docker info >/dev/null 2>&1 || die "no Docker daemon answers (make docker)"
  kind get clusters 2>/dev/null | grep -qx "$CLUSTER" \
    || die "no kind cluster $CLUSTER (make kind-up)"
  # The manifests name the images and the version this script builds.
  local want
  for want in "image: $OPERATOR_IMAGE" "--prometheus-config-reloader=$RELOADER_IMAGE"; do
    grep -qF -- "$want" "$MANIFESTS/operator.yaml" || die "operator.yaml lacks '$want' (hack/versions.env)"
  done
  grep -qF "image: $PROMETHEUS_IMAGE" "$MANIFESTS/prometheus.yaml" \
    || die "prometheus.yaml lacks 'image: $PROMETHEUS_IMAGE' (hack/versions.env)"
}

# static_image NAME BINARY PATH-IN-IMAGE: the binary alone in a scratch image,
# run as nobody. Rebuilt only when the binary (size, time) or this recipe
# changed: the image carries their hash as a label.
static_image() {
  local name=$1 binary=$2 path=$3 dockerfile inputs have ctx flags=()
  [[ -x $binary ]] || die "missing $binary (hack/build-tools.sh)"
  dockerfile="FROM scratch
COPY $(basename "$binary") $path
USER 65534:65534
ENTRYPOINT [\"$path\"]"
  inputs=$({ echo "$dockerfile"; stat -c '%s %Y' "$binary"; } | sha256sum | cut -c1-16)
  have=$(docker image inspect -f "{{ index .Config.Labels \"$INPUTS_LABEL\" }}" "$name" 2>/dev/null || true)
  if [[ $have == "$inputs" ]]; then return 0; fi
  log "building $name"
  # A daemon without a default bridge (hack/kind/docker.sh) builds on the host
  # network, as the Makefile's DOCKER_BUILD_FLAGS says.
  docker network inspect bridge >/dev/null 2>&1 || flags=(--network host)
  ctx=$(mktemp -d)
  ln -f "$binary" "$ctx/" 2>/dev/null || cp "$binary" "$ctx/"
  local out
  out=$(docker build -q "${flags[@]}" --label "$INPUTS_LABEL=$inputs" -t "$name" -f - "$ctx" \
    <<<"$dockerfile" 2>&1) || { rm -rf "$ctx"; printf '%s\n' "$out" >&2; die "docker build of $name failed"; }
  rm -rf "$ctx"
}

# Does every kind node hold these images, with the IDs docker has? (One
# `crictl inspecti` per node; `kind load` asks once per image and node.)
loaded_everywhere() {
  local want node image
  want=$(for image in "$@"; do docker image inspect -f '{{.Id}} ' "$image"; done | tr -d '\n')
  for node in $(kind get nodes --name "$CLUSTER"); do
    [[ $(docker exec "$node" crictl inspecti -o go-template --template '{{range .}}{{.status.id}} {{end}}' \
      "${@/#/docker.io/}" 2>/dev/null) == "$want" ]] || return 1
  done
}

images() {
  static_image "$OPERATOR_IMAGE" "$BIN/prometheus-operator" /bin/operator
  # The operator runs the reloader as /bin/prometheus-config-reloader.
  static_image "$RELOADER_IMAGE" "$BIN/prometheus-config-reloader" /bin/prometheus-config-reloader
  static_image "$PROMETHEUS_IMAGE" "$BIN/prometheus" /bin/prometheus
  local all=("$OPERATOR_IMAGE" "$RELOADER_IMAGE" "$PROMETHEUS_IMAGE")
  loaded_everywhere "${all[@]}" && return 0
  log "kind load docker-image ${all[*]}"
  local out
  out=$(kind load docker-image --name "$CLUSTER" "${all[@]}" 2>&1) \
    || { printf '%s\n' "$out" >&2; die "kind load docker-image --name $CLUSTER ${all[*]} failed"; }
  loaded_everywhere "${all[@]}" || die "after kind load, a node of $CLUSTER lacks one of ${all[*]}"
}

# Are all CRDs of $CRDS installed at this operator version? (Applying the ten
# of them again takes ~10 s even when nothing changes.)
crds_current() {
  local f name want have
  want=$(for f in "$CRDS"/*.yaml; do
    name=$(basename "$f" .yaml); echo "${name#*_}.${name%%_*} ${PROMETHEUS_OPERATOR_VERSION#v}"
  done | sort)
  have=$(k get crd -o 'jsonpath={range .items[?(@.spec.group=="monitoring.coreos.com")]}{.metadata.name} {.metadata.annotations.operator\.prometheus\.io/version}{"\n"}{end}' | sort)
  [[ $have == "$want" ]]
}

deploy() {
  if ! crds_current; then
    log "installing the monitoring.coreos.com CRDs $PROMETHEUS_OPERATOR_VERSION"
    k apply --server-side --force-conflicts --field-manager=reactive-loop-ci -f "$CRDS" >/dev/null
    k wait --for=condition=Established --timeout=60s -f "$CRDS" >/dev/null
  fi
  k apply --server-side --field-manager=reactive-loop-ci -f "$MANIFESTS/namespace.yaml" >/dev/null
  k apply --server-side --field-manager=reactive-loop-ci -f "$MANIFESTS/operator.yaml" \
    -f "$MANIFESTS/prometheus.yaml" >/dev/null
}

wait_ready() {
  k -n "$NAMESPACE" rollout status deployment/prometheus-operator --timeout=120s >/dev/null \
    || { diagnose; die "the Prometheus Operator did not become ready"; }
  local deadline=$((SECONDS + 60))
  until k -n "$NAMESPACE" get statefulset "$STATEFULSET" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { diagnose; die "the operator made no StatefulSet $STATEFULSET"; }
    sleep 1
  done
  k -n "$NAMESPACE" rollout status statefulset/"$STATEFULSET" --timeout=180s >/dev/null \
    || { diagnose; die "Prometheus did not become ready"; }
  k -n "$NAMESPACE" wait prometheus/main --for=condition=Available --timeout=60s >/dev/null \
    || { diagnose; die "the Prometheus resource is not Available"; }
  # Through the API server's service proxy, as the tests query it.
  deadline=$((SECONDS + 60))
  until k get --raw "/api/v1/namespaces/$NAMESPACE/services/prometheus-operated:9090/proxy/-/ready" \
    >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { diagnose; die "Prometheus does not answer through the service proxy"; }
    sleep 1
  done
}

preflight
images
deploy
wait_ready
log "ready: Prometheus Operator $PROMETHEUS_OPERATOR_VERSION and Prometheus ($PROMETHEUS_IMAGE) in namespace $NAMESPACE"
