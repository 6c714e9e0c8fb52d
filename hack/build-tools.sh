#!/usr/bin/env bash
# Build the local cluster's binaries from their Go modules (through the Go
# module proxy) into a cache outside the repository:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, etcd, helm
# Each tool gets its own throw-away Go module under the cache, so the k8s.io
# minor version each needs never has to agree. A warm cache returns at once.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
CACHE="${RL_CACHE:-$HOME/.cache/reactive-loop}"
BIN="$CACHE/bin"
SRC="$CACHE/src"
mkdir -p "$BIN" "$SRC"
export GOFLAGS="${GOFLAGS:--mod=mod}" CGO_ENABLED=0

log() { printf '[build-tools] %s\n' "$*" >&2; }

stamp_ok() { [[ -x "$BIN/$1" && -f "$BIN/.$1.version" && "$(cat "$BIN/.$1.version")" == "$2" ]]; }

build_kubernetes() {
  local want="$K8S_VERSION"
  if stamp_ok kube-apiserver "$want" && stamp_ok kube-controller-manager "$want" \
     && stamp_ok kube-scheduler "$want" && stamp_ok kubectl "$want"; then
    return 0
  fi
  local dir="$SRC/kubernetes-$want"
  mkdir -p "$dir"
  local staging=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go
    cloud-provider cluster-bootstrap code-generator component-base component-helpers
    controller-manager cri-api cri-client csi-translation-lib dynamic-resource-allocation
    endpointslice externaljwt kms kube-aggregator kube-controller-manager kube-proxy
    kube-scheduler kubectl kubelet metrics mount-utils pod-security-admission
    sample-apiserver sample-cli-plugin sample-controller)
  {
    echo "module reactive-loop.dev/tools/kubernetes"
    echo
    echo "go 1.25.0"
    echo
    echo "require k8s.io/kubernetes $want"
    echo
    echo "replace ("
    for m in "${staging[@]}"; do echo "	k8s.io/$m => k8s.io/$m $K8S_STAGING_VERSION"; done
    echo ")"
  } > "$dir/go.mod"
  cat > "$dir/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver/app"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	_ "k8s.io/kubernetes/cmd/kube-scheduler/app"
	_ "k8s.io/kubectl/pkg/cmd"
)
GO
  log "resolving k8s.io/kubernetes $want"
  (cd "$dir" && go mod tidy -e >/dev/null 2>"$dir/tidy.log" || { cat "$dir/tidy.log" >&2; exit 1; })
  log "building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl $want (cold: many minutes)"
  local ld="-s -w -X k8s.io/component-base/version.gitVersion=$want -X k8s.io/client-go/pkg/version.gitVersion=$want -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(echo "$want" | cut -d. -f2)"
  mkdir -p "$dir/out"
  (cd "$dir" && go build -trimpath -ldflags "$ld" -o out/ \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
  for b in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    install -m 0755 "$dir/out/$b" "$BIN/$b"; echo "$want" > "$BIN/.$b.version"
  done
}

build_etcd() {
  local want="$ETCD_VERSION"
  stamp_ok etcd "$want" && return 0
  local dir="$SRC/etcd-$want"
  mkdir -p "$dir"
  cat > "$dir/go.mod" <<GOMOD
module reactive-loop.dev/tools/etcd

go 1.25.0

require (
	go.etcd.io/etcd/server/v3 $want
	go.etcd.io/etcd/api/v3 $want
	go.etcd.io/etcd/client/pkg/v3 $want
	go.etcd.io/etcd/client/v3 $want
	go.etcd.io/etcd/pkg/v3 $want
)
GOMOD
  cat > "$dir/tools.go" <<'GO'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3/etcdmain"
GO
  log "resolving etcd $want"
  (cd "$dir" && go mod tidy -e >/dev/null 2>"$dir/tidy.log" || { cat "$dir/tidy.log" >&2; exit 1; })
  log "building etcd $want"
  (cd "$dir" && go build -trimpath -ldflags "-s -w" -o out/etcd go.etcd.io/etcd/server/v3)
  install -m 0755 "$dir/out/etcd" "$BIN/etcd"; echo "$want" > "$BIN/.etcd.version"
}

build_helm() {
  # The default Kubernetes version helm assumes offline (helm template) is
  # stamped to the cluster's, so charts with a kubeVersion constraint render.
  local want="$HELM_VERSION+k8s$K8S_VERSION"
  stamp_ok helm "$want" && return 0
  log "building helm $want"
  GOBIN="$SRC/helm-$HELM_VERSION" go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$(echo "$K8S_VERSION" | cut -d. -f2)" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  install -m 0755 "$SRC/helm-$HELM_VERSION/helm" "$BIN/helm"; echo "$want" > "$BIN/.helm.version"
}

# Prometheus from its Go module: Debian's package is built without
# kubernetes_sd_configs, which the cluster monitoring tests use.
build_prometheus() {
  local want="$PROMETHEUS_VERSION"
  stamp_ok prometheus "$want" && stamp_ok promtool "$want" && return 0
  log "building prometheus and promtool $want (cold: many minutes)"
  GOBIN="$SRC/prometheus-$want" go install -trimpath \
    -ldflags "-s -w -X github.com/prometheus/common/version.Version=$want" \
    "github.com/prometheus/prometheus/cmd/prometheus@$want" \
    "github.com/prometheus/prometheus/cmd/promtool@$want"
  for b in prometheus promtool; do
    install -m 0755 "$SRC/prometheus-$want/$b" "$BIN/$b"; echo "$want" > "$BIN/.$b.version"
  done
}

targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=(etcd helm kubernetes prometheus)
for t in "${targets[@]}"; do
  case "$t" in
    kubernetes) build_kubernetes ;;
    etcd) build_etcd ;;
    helm) build_helm ;;
    prometheus) build_prometheus ;;
    *) log "unknown tool: $t (want kubernetes, etcd, helm or prometheus)"; exit 2 ;;
  esac
done
log "tools ready in $BIN"
