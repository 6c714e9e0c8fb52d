#!/usr/bin/env bash
# Build the clusters' binaries from their Go modules (through the Go module
# proxy) into a cache outside the repository:
#   local cluster: kube-apiserver, kube-controller-manager, kube-scheduler,
#                  kubectl, etcd, helm, prometheus, promtool
#   kind:          kind, kubelet, kubeadm, kube-proxy, coredns,
#                  kube-network-policies (the node image's parts)
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

KUBE_CONTROL_PLANE=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
KUBE_NODE=(kubelet kubeadm kube-proxy)

# Build the named k8s.io/kubernetes commands; those already built at this
# version are skipped, and one module (and Go build cache) serves them all.
build_kubernetes() {
  local want="$K8S_VERSION" b todo=()
  for b in "$@"; do stamp_ok "$b" "$want" || todo+=("$b"); done
  [[ ${#todo[@]} -eq 0 ]] && return 0
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
  } > "$dir/go.mod.want"
  cat > "$dir/tools.go.want" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubectl/pkg/cmd"
	_ "k8s.io/kubernetes/cmd/kube-apiserver/app"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	_ "k8s.io/kubernetes/cmd/kube-proxy/app"
	_ "k8s.io/kubernetes/cmd/kube-scheduler/app"
	_ "k8s.io/kubernetes/cmd/kubeadm/app"
	_ "k8s.io/kubernetes/cmd/kubelet/app"
)
GO
  # Resolve once per version (the files only change with this script).
  if ! cmp -s "$dir/tools.go.want" "$dir/tools.go" || [[ ! -f $dir/go.sum ]]; then
    cp "$dir/go.mod.want" "$dir/go.mod"; cp "$dir/tools.go.want" "$dir/tools.go"
    log "resolving k8s.io/kubernetes $want"
    if ! (cd "$dir" && go mod tidy -e >/dev/null 2>"$dir/tidy.log"); then cat "$dir/tidy.log" >&2; exit 1; fi
  fi
  log "building ${todo[*]} $want (cold: many minutes)"
  local ld minor
  minor=$(echo "$want" | cut -d. -f2)
  ld="-s -w -X k8s.io/component-base/version.gitVersion=$want -X k8s.io/client-go/pkg/version.gitVersion=$want -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
  local pkgs=()
  for b in "${todo[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  mkdir -p "$dir/out"
  (cd "$dir" && go build -trimpath -ldflags "$ld" -o out/ "${pkgs[@]}")
  for b in "${todo[@]}"; do
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
  if ! (cd "$dir" && go mod tidy -e >/dev/null 2>"$dir/tidy.log"); then cat "$dir/tidy.log" >&2; exit 1; fi
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

# One command from a module without replace directives: `go install` it at
# the version, install it into $BIN and stamp it.
#   go_install NAME VERSION PACKAGE [EXTRA_LDFLAGS]
go_install() {
  local name=$1 want=$2 package=$3 ldflags="-s -w ${4:-}"
  stamp_ok "$name" "$want" && return 0
  log "building $name $want"
  GOBIN="$SRC/$name-$want" go install -trimpath -ldflags "$ldflags" "$package@$want"
  install -m 0755 "$SRC/$name-$want/$name" "$BIN/$name"; echo "$want" > "$BIN/.$name.version"
}

# kind itself: the CLI that makes clusters of node containers.
build_kind() { go_install kind "$KIND_VERSION" sigs.k8s.io/kind; }

# CoreDNS at the version kubeadm $K8S_VERSION deploys (its image is built here).
build_coredns() {
  go_install coredns "$COREDNS_VERSION" github.com/coredns/coredns \
    "-X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION"
}

# crictl, the CRI client kind uses inside a node (`kind load` asks it which
# images are there; `kind export logs` lists them).
build_crictl() {
  go_install crictl "$CRI_TOOLS_VERSION" sigs.k8s.io/cri-tools/cmd/crictl \
    "-X sigs.k8s.io/cri-tools/pkg/version.Version=$CRI_TOOLS_VERSION"
}

# The NetworkPolicy enforcer that kind's kindnetd embeds. Where the kernel
# has no nftables queue expression (quirks.sh: rl_need_xt_nfqueue) it is
# built from a patched copy of its module instead, see
# hack/kind/kube-network-policies-xt-nfqueue.patch; the stamp names the patch,
# so the binary is rebuilt when the patch (or the kernel's need) changes.
build_kube_network_policies() {
  local want="$KUBE_NETWORK_POLICIES_VERSION" patch="$here/kind/kube-network-policies-xt-nfqueue.patch"
  # shellcheck source=kind/quirks.sh
  source "$here/kind/quirks.sh"
  local patched=""
  if rl_need_xt_nfqueue; then
    patched=1; want="$want+xt-nfqueue.$(sha256sum < "$patch" | cut -c1-8)"
  fi
  stamp_ok kube-network-policies "$want" && return 0
  local out="$SRC/kube-network-policies-$KUBE_NETWORK_POLICIES_VERSION"
  mkdir -p "$out"
  if [[ -n $patched ]]; then
    log "building kube-network-policies $want (patched: this kernel has no nftables queue expression)"
    local module tree="$out/src"
    module=$(cd "$out" && go mod download -json "sigs.k8s.io/kube-network-policies@$KUBE_NETWORK_POLICIES_VERSION" \
      | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
    [[ -d $module ]] || { log "kube-network-policies: module not downloaded"; exit 1; }
    rm -rf "$tree"; cp -r "$module" "$tree"; chmod -R u+w "$tree"
    (cd "$tree" && patch -p1 --quiet < "$patch" \
      && go build -trimpath -ldflags "-s -w" -o "$out/cmd" ./cmd)
  else
    log "building kube-network-policies $want"
    GOBIN="$out" go install -trimpath -ldflags "-s -w" \
      "sigs.k8s.io/kube-network-policies/cmd@$KUBE_NETWORK_POLICIES_VERSION"
  fi
  install -m 0755 "$out/cmd" "$BIN/kube-network-policies"
  echo "$want" > "$BIN/.kube-network-policies.version"
}

# The Prometheus Operator and its config reloader, from the module's own tree
# (its go.mod has replace directives, so `go install pkg@version` refuses it),
# with the CRDs of the same version copied beside them for the chart tests.
build_prometheus_operator() {
  local want="$PROMETHEUS_OPERATOR_VERSION"
  stamp_ok prometheus-operator "$want" && stamp_ok prometheus-config-reloader "$want" \
    && [[ -d $CACHE/prometheus-operator-crd-$want ]] && return 0
  local out="$SRC/prometheus-operator-$want" module
  mkdir -p "$out"
  log "building prometheus-operator and prometheus-config-reloader $want (cold: minutes)"
  module=$(cd "$out" && go mod download -json "github.com/prometheus-operator/prometheus-operator@$want" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [[ -d $module ]] || { log "prometheus-operator: module not downloaded"; exit 1; }
  local tree="$out/src" v="github.com/prometheus/common/version"
  rm -rf "$tree"; cp -r "$module" "$tree"; chmod -R u+w "$tree"
  # Its replace directives point at nested modules that the module zip does
  # not hold; the same version of each is published on its own.
  local m
  for m in pkg/apis/monitoring pkg/client; do
    (cd "$tree" && go mod edit -dropreplace "github.com/prometheus-operator/prometheus-operator/$m" \
      -require "github.com/prometheus-operator/prometheus-operator/$m@$want")
  done
  (cd "$tree" && go mod tidy -e >/dev/null 2>"$out/tidy.log") || { cat "$out/tidy.log" >&2; exit 1; }
  (cd "$tree" && go build -trimpath -ldflags "-s -w -X $v.Version=${want#v} -X $v.Revision=$want -X $v.Branch=release" \
    -o "$out/" ./cmd/operator ./cmd/prometheus-config-reloader)
  install -m 0755 "$out/operator" "$BIN/prometheus-operator"
  install -m 0755 "$out/prometheus-config-reloader" "$BIN/prometheus-config-reloader"
  rm -rf "$CACHE/prometheus-operator-crd-$want"
  cp -r "$tree/example/prometheus-operator-crd" "$CACHE/prometheus-operator-crd-$want"
  echo "$want" > "$BIN/.prometheus-operator.version"; echo "$want" > "$BIN/.prometheus-config-reloader.version"
}

targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=(etcd helm kubernetes prometheus)
for t in "${targets[@]}"; do
  case "$t" in
    kubernetes) build_kubernetes "${KUBE_CONTROL_PLANE[@]}" ;;
    kind) build_kind ;;
    # What a kind node image holds, built here where no registry serves it.
    kind-node) build_kubernetes "${KUBE_CONTROL_PLANE[@]}" "${KUBE_NODE[@]}"
               build_etcd; build_coredns; build_kube_network_policies; build_crictl ;;
    etcd) build_etcd ;;
    helm) build_helm ;;
    prometheus) build_prometheus ;;
    prometheus-operator) build_prometheus_operator ;;
    *) log "unknown tool: $t (want kubernetes, etcd, helm, prometheus, prometheus-operator, kind or kind-node)"; exit 2 ;;
  esac
done
log "tools ready in $BIN"
