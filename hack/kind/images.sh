#!/usr/bin/env bash
# The container images a reactive-loop kind node holds, built from the static
# binaries of hack/build-tools.sh kind (called by node-image.sh):
#   - what `kubeadm config images list` names: the control plane, kube-proxy,
#     etcd, CoreDNS and pause (a small C program, images/pause.c);
#   - reactive-loop/kind-net:current, the pod network (images/kind-net/).
# Go binaries go into empty (scratch) images; kube-proxy and kind-net need a
# shell and iptables/nftables, so they get the slim Debian rootfs.
#
# Environment: BIN (the binaries), SLIM (the slim rootfs image), WORK (an
# empty scratch directory). Prints one line per image: its private docker
# name, then the names (comma separated) it must carry inside the node.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../versions.env
source "$here/../versions.env"
: "${BIN:?}" "${SLIM:?}" "${WORK:?}"
export DOCKER_BUILDKIT=0

log() { printf '[node-image] images: %s\n' "$*" >&2; }

# build PRIVATE-NAME DOCKERFILE FILE...: a docker build whose context holds
# only the given files (hard links, so nothing is copied).
build() {
  local name=$1 dockerfile=$2 ctx f; shift 2
  ctx=$(mktemp -d "$WORK/ctx.XXXXXX")
  for f in "$@"; do ln -f "$f" "$ctx/" 2>/dev/null || cp "$f" "$ctx/"; done
  docker build -q --label "${RL_BUILD_LABEL:?}=part" -t "$name" -f - "$ctx" <<<"$dockerfile" >/dev/null
  rm -rf "$ctx"
}

# A Go binary alone in an image, run as its entrypoint.
static_image() { # NAME BINARY PATH-IN-IMAGE
  build "$1" "FROM scratch
COPY $(basename "$2") $3
ENV PATH=/usr/local/bin:/usr/bin:/bin
ENTRYPOINT [\"$3\"]" "$2"
}

# Refuse to label a binary with a version it is not (versions.env must name
# the etcd and CoreDNS that this kubeadm deploys).
same_version() { # WHAT WANTED-BY-KUBEADM OURS
  [[ $2 == "$3" ]] || { log "kubeadm deploys $1 $2 but versions.env builds $3; fix hack/versions.env"; exit 1; }
}

private() { echo "reactive-loop/kind-part-$1"; }

kubeadm_images=$("$BIN/kubeadm" config images list --kubernetes-version "$K8S_VERSION" 2>/dev/null)
for ref in $kubeadm_images; do
  name=${ref##*/}; component=${name%%:*}; tag=${name#*:}
  image=$(private "$component:$tag")
  case $component in
    kube-apiserver|kube-controller-manager|kube-scheduler)
      static_image "$image" "$BIN/$component" "/usr/local/bin/$component" ;;
    kube-proxy)
      build "$image" "FROM $SLIM
COPY kube-proxy /usr/local/libexec/kube-proxy
COPY kube-proxy.sh /usr/local/bin/kube-proxy
COPY rl-iptables-mode /usr/local/bin/rl-iptables-mode" \
        "$BIN/kube-proxy" "$here/images/kube-proxy.sh" "$here/node/rootfs/usr/local/bin/rl-iptables-mode" ;;
    etcd)
      same_version etcd "${tag%-*}" "${ETCD_VERSION#v}"
      static_image "$image" "$BIN/etcd" /usr/local/bin/etcd ;;
    coredns)
      same_version CoreDNS "$tag" "$COREDNS_VERSION"
      static_image "$image" "$BIN/coredns" /coredns ;;
    pause)
      same_version pause "$tag" "$PAUSE_VERSION"
      gcc -Os -static -s -o "$WORK/pause" "$here/images/pause.c"
      build "$image" 'FROM scratch
COPY pause /pause
USER 65535:65535
ENTRYPOINT ["/pause"]' "$WORK/pause"
      # containerd configs written for kubeadm 1.33 and older name :3.10.
      ref="$ref,${ref%:*}:3.10" ;;
    *) log "kubeadm wants $ref, which is not built here"; exit 1 ;;
  esac
  log "$ref"
  echo "$image $ref"
done

image=$(private kind-net:current)
build "$image" "FROM $SLIM
COPY kube-network-policies rl-net /usr/local/bin/" \
  "$BIN/kube-network-policies" "$here/images/kind-net/rl-net"
log "reactive-loop/kind-net:current"
echo "$image docker.io/reactive-loop/kind-net:current"
