#!/usr/bin/env bash
# Build the kind node image reactive-loop/kind-node:$K8S_VERSION here, from
# Debian packages and the binaries hack/build-tools.sh kind built from Go
# modules, without any container registry (`kind build node-image` would
# pull its base image, etcd, CoreDNS, pause and kindnetd).
#
#   hack/kind/node-image.sh            build if an input changed, print the name
#   KIND_NODE_IMAGE=name:tag hack/kind/node-image.sh
#
# Then: kind create cluster --config kind-config.yaml --image <printed name>
#
# Needs a Docker daemon (hack/kind/docker.sh up), mmdebstrap, gcc (static
# libc) and the binaries in $RL_CACHE/bin. Every input (versions, the files
# of hack/kind, the binaries) goes into a hash that the image carries as a
# label: when it matches, nothing is done. Debian rootfs tarballs are cached
# in $RL_CACHE/kind. Steps:
#   1. two Debian rootfs (mmdebstrap, docker import): the node's (systemd,
#      containerd, runc, CNI plugins, iptables, ...) and a slim one for the
#      images that need a shell or iptables (kube-proxy, kind-net);
#   2. the container images kubeadm and the CNI manifest ask for, built from
#      the static binaries (images.sh);
#   3. the node: rootfs + node/ files + kubelet, kubeadm, kubectl
#      (node/Dockerfile); then a container of it runs containerd, imports
#      the images of step 2 into it, and is committed as the node image.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../versions.env
source "$here/../versions.env"
CACHE="${RL_CACHE:-$HOME/.cache/reactive-loop}"
BIN="$CACHE/bin"
WORK="$CACHE/kind"
IMAGE="${KIND_NODE_IMAGE:-reactive-loop/kind-node:$K8S_VERSION}"
HASH_LABEL=dev.reactive-loop.kind-node.inputs
# On every image made here, so that only ours are ever pruned.
export RL_BUILD_LABEL=dev.reactive-loop.kind-build
SOURCES=/etc/apt/sources.list.d/debian.sources
SUITE=bookworm
export DOCKER_BUILDKIT=0 # the classic builder: no buildx plugin is needed
start=$SECONDS

log() { printf '[node-image] %3ss %s\n' "$((SECONDS - start))" "$*" >&2; }
die() { log "$*"; exit 1; }

NODE_BINS=(kubelet kubeadm kubectl crictl)
IMAGE_BINS=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy etcd coredns
  kube-network-policies)
NODE_PACKAGES=(systemd systemd-sysv containerd runc containernetworking-plugins iptables
  nftables conntrack iproute2 ethtool socat mount util-linux kmod ca-certificates jq procps
  libseccomp2 pigz mawk netbase iputils-ping)
SLIM_PACKAGES=(iptables nftables conntrack iproute2 jq curl ca-certificates mawk netbase)

preflight() {
  local b missing=()
  for b in "${NODE_BINS[@]}" "${IMAGE_BINS[@]}"; do [[ -x $BIN/$b ]] || missing+=("$b"); done
  [[ ${#missing[@]} -eq 0 ]] || die "missing in $BIN: ${missing[*]} (run hack/build-tools.sh kind-node)"
  command -v mmdebstrap >/dev/null || die "no mmdebstrap (apt-get install mmdebstrap)"
  command -v gcc >/dev/null || die "no gcc (apt-get install gcc libc6-dev)"
  [[ -f $SOURCES ]] || die "no $SOURCES: the rootfs use the host's Debian mirror"
  docker info >/dev/null 2>&1 || die "no Docker daemon answers (hack/kind/docker.sh up)"
}

# Everything the image is made of; binaries by size and time, not content
# (hashing ~1 GB on every call would cost seconds).
inputs_hash() {
  {
    cat "$here/../versions.env"
    (cd "$here" && find node-image.sh images.sh quirks.sh node images -type f -print0 \
      | LC_ALL=C sort -z | xargs -0 sha256sum)
    local b; for b in "${NODE_BINS[@]}" "${IMAGE_BINS[@]}"; do stat -c '%n %s %Y' "$BIN/$b"; done
  } | sha256sum | cut -c1-16
}

# A Debian rootfs as a docker image, from a tarball cached by its recipe.
#   rootfs NAME PACKAGE...   prints the image name
rootfs() {
  local name=$1; shift
  local recipe key tar image
  recipe="$SUITE essential merged-usr $(IFS=,; echo "$*") $(sha256sum < "$SOURCES")"
  key=$(sha256sum <<<"$recipe" | cut -c1-12)
  tar="$WORK/rootfs-$name-$key.tar"
  image="reactive-loop/kind-rootfs-$name:$key"
  if docker image inspect "$image" >/dev/null 2>&1; then echo "$image"; return; fi
  if [[ ! -f $tar ]]; then
    log "rootfs $name: mmdebstrap $SUITE (+ $#) packages"
    rm -f "$WORK/rootfs-$name-"*.tar
    # Essential packages plus ours, no apt; merged /usr without the usrmerge
    # package (which would pull in perl); no docs or manuals.
    mmdebstrap --variant=essential --format=tar --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
      --aptopt='APT::Install-Recommends "false"' \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/lintian/*' \
      --include="$(IFS=,; echo "$*")" \
      "$SUITE" "$tar.part" "$SOURCES" >"$WORK/mmdebstrap-$name.log" 2>&1 \
      || { tail -30 "$WORK/mmdebstrap-$name.log" >&2; die "mmdebstrap failed (log: $WORK/mmdebstrap-$name.log)"; }
    mv "$tar.part" "$tar"
  fi
  log "rootfs $name: docker import"
  docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "LABEL $RL_BUILD_LABEL=rootfs" "$tar" "$image" >/dev/null
  # Older rootfs of this name (another recipe) are no longer used.
  docker images --format '{{.Repository}}:{{.Tag}}' "reactive-loop/kind-rootfs-$name" \
    | grep -vxF "$image" | xargs -r docker rmi >/dev/null 2>&1 || true
  echo "$image"
}

main() {
  preflight
  mkdir -p "$WORK"
  local hash; hash=$(inputs_hash)
  if [[ $(docker image inspect -f "{{index .Config.Labels \"$HASH_LABEL\"}}" "$IMAGE" 2>/dev/null) == "$hash" ]]; then
    log "$IMAGE is up to date (inputs $hash)"
    echo "$IMAGE"; return
  fi
  local node_rootfs slim_rootfs
  node_rootfs=$(rootfs node "${NODE_PACKAGES[@]}")
  slim_rootfs=$(rootfs slim "${SLIM_PACKAGES[@]}")

  local build; build=$(mktemp -d "$WORK/build.XXXXXX")
  # shellcheck disable=SC2064 # expand now: the trap must remove this build
  trap "rm -rf '$build'; docker rm -f rl-kind-node-build-$$ >/dev/null 2>&1 || true" EXIT

  # The images kubeadm pulls, under private names (so that a machine's
  # real registry.k8s.io images are never overwritten); renamed in step 3.
  local images
  images=$(BIN="$BIN" SLIM="$slim_rootfs" WORK="$build" "$here/images.sh")

  log "node: docker build"
  mkdir -p "$build/node/bin"
  cp -a "$here/node/Dockerfile" "$here/node/setup.sh" "$here/node/rootfs" "$here/quirks.sh" "$build/node/"
  # kind reads the Kubernetes version of a node image from here.
  echo -n "$K8S_VERSION" > "$build/node/rootfs/kind/version"
  local b; for b in "${NODE_BINS[@]}"; do ln -f "$BIN/$b" "$build/node/bin/$b" 2>/dev/null || cp "$BIN/$b" "$build/node/bin/"; done
  docker build -q --label "$RL_BUILD_LABEL=node" --build-arg "ROOTFS=$node_rootfs" \
    -t reactive-loop/kind-node-base:build "$build/node" >/dev/null

  log "node: loading $(wc -l <<<"$images") images into its containerd"
  load_images reactive-loop/kind-node-base:build "$images" "$hash"
  # shellcheck disable=SC2046 # one image name per word
  docker rmi reactive-loop/kind-node-base:build $(cut -d' ' -f1 <<<"$images") >/dev/null
  # What this build replaced or left untagged (the previous node image, unless
  # a container still uses it).
  docker image prune -f --filter "label=$RL_BUILD_LABEL" >/dev/null
  log "done: $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
  echo "$IMAGE"
}

# Run containerd in a container of the node image (no privileges needed:
# nothing is unpacked), import the images, rename them to what kubeadm and
# containerd's config ask for, pin them, and commit the container.
#   load_images BASE "PRIVATE-NAME FINAL-NAME..." HASH
load_images() {
  local base=$1 images=$2 hash=$3 name=rl-kind-node-build-$$
  # --init: something must reap containerd once it is stopped. (On success
  # the output is only Docker's warning that IPv4 forwarding is off.)
  local err
  err=$(docker run -d --init --name "$name" --entrypoint sleep "$base" infinity 2>&1 >/dev/null) \
    || { echo "$err" >&2; die "cannot start a container of $base"; }
  docker exec "$name" bash -c 'containerd >/tmp/containerd.log 2>&1 &'
  local _; for _ in $(seq 50); do docker exec "$name" ctr version >/dev/null 2>&1 && break; sleep 0.2; done
  docker exec "$name" ctr version >/dev/null || die "containerd did not start in the build container"
  log "node: docker save | ctr import"
  # shellcheck disable=SC2046 # one image name per word
  docker save $(cut -d' ' -f1 <<<"$images") \
    | docker exec -i "$name" ctr -n k8s.io images import --no-unpack --all-platforms - >/dev/null
  local private final
  while read -r private final; do
    for final in ${final//,/ }; do
      docker exec "$name" ctr -n k8s.io images tag --force "docker.io/$private" "$final" >/dev/null
      docker exec "$name" ctr -n k8s.io images label "$final" io.cri-containerd.pinned=pinned >/dev/null
    done
    docker exec "$name" ctr -n k8s.io images rm "docker.io/$private" >/dev/null
  done <<<"$images"
  docker exec "$name" ctr -n k8s.io images ls -q | grep -v '^sha256:' | sed 's/^/[node-image]   in the node: /' >&2
  docker exec "$name" bash -c 'pkill -x containerd; while pgrep -x containerd >/dev/null; do sleep 0.1; done
    rm -rf /run/containerd /tmp/containerd.log'
  log "node: docker commit"
  docker commit \
    --change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' --change 'CMD []' \
    --change "LABEL $HASH_LABEL=$hash" \
    "$name" "$IMAGE" >/dev/null
  docker rm -f "$name" >/dev/null
}

main "$@"
