#!/usr/bin/env bash
# Make sure the base image of node/Dockerfile and operator/Dockerfile exists,
# then print the `docker build` network flag this daemon needs (may be empty).
#
#   net=$(hack/kind/python-base.sh)
#   docker build -f node/Dockerfile -t reactive-loop-node:0.1.0 $net .
#
# The Dockerfiles are what anyone with a registry builds: `FROM
# python:3.11-slim-bookworm`. In order:
#   1. the image is already in the daemon        -> nothing to do;
#   2. a registry answers                         -> `docker pull` it;
#   3. no registry (this project's CI machines)   -> build a stand-in from
#      Debian packages (mmdebstrap) and `docker import` it under that tag.
# Only step 3 is specific to a machine; on a laptop it never runs.
#
# Environment: RL_CACHE (default ~/.cache/reactive-loop; the stand-in's tarball
# is cached in $RL_CACHE/images/), RL_PYTHON_BASE_REBUILD=1 (rebuild the
# stand-in even if cached), RL_DEBIAN_SOURCES (an apt sources file for the
# stand-in; default: the host's Debian sources).
#
# Logs go to stderr; stdout carries only the network flag.
set -euo pipefail

IMAGE=python:3.11-slim-bookworm
SUITE=bookworm
CACHE="${RL_CACHE:-$HOME/.cache/reactive-loop}"
IMAGES="$CACHE/images"
# Identifies stand-ins made here, and which inputs made them.
LABEL=dev.reactive-loop.python-base
# Bump when the recipe below changes in a way the inputs do not capture.
RECIPE=1

log() { printf '[python-base] %s\n' "$*" >&2; }

# The flag `docker build` needs for its RUN steps (pip install) to reach the
# network. A daemon started with `--bridge=none` (hack/kind/docker.sh's
# private one) has no default `bridge` network, so the classic builder's
# containers would get no network at all: use the host's.
network_flag() {
  if docker network inspect bridge >/dev/null 2>&1; then echo ""; else echo "--network host"; fi
}

# --- the stand-in -----------------------------------------------------------
# What the official image holds that a Python program may rely on: the
# interpreter and its full stdlib (python3.11), venv + ensurepip's wheels
# (python3.11-venv, python3-venv; the Dockerfiles run `python -m venv`), a
# `python` command (python-is-python3), TLS roots (ca-certificates),
# /etc/services and /etc/protocols (netbase), and time zones (tzdata).
PACKAGES=(python3.11 python3.11-venv python3-venv python-is-python3 ca-certificates netbase tzdata)
# Docs, man pages and translations are not needed in an image (the official
# slim image does not carry them either); copyright files stay.
DPKG_OPTS=(
  'path-exclude=/usr/share/doc/*'
  'path-include=/usr/share/doc/*/copyright'
  'path-exclude=/usr/share/man/*'
  'path-exclude=/usr/share/info/*'
  'path-exclude=/usr/share/locale/*'
  'path-include=/usr/share/locale/locale.alias'
)
# The image config the official image sets and the Dockerfiles rely on.
CHANGES=(
  'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  'ENV LANG=C.UTF-8'
  'CMD ["python3"]'
)
# The extra CA certificates this host trusts. Egress from these machines
# goes through a TLS-intercepting proxy, so pip inside `docker build` reaches
# PyPI only if the image trusts them too. The stand-in is only ever built on
# such a machine (a machine with a registry pulls the real image), so it
# installs them; the real image and the Dockerfiles know nothing of them.
EXTRA_CA_DIR=/usr/local/share/ca-certificates

# apt sources for the stand-in: the host's Debian sources, because on these
# machines that mirror is the one that answers. Other hosts' sources (or
# none) leave mmdebstrap's default: deb.debian.org plus updates and security.
debian_sources() {
  if [[ -n ${RL_DEBIAN_SOURCES:-} ]]; then echo "$RL_DEBIAN_SOURCES"; return; fi
  local f
  for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    if [[ -s $f ]] && grep -q "$SUITE" "$f"; then echo "$f"; return; fi
  done
}

extra_cas() { [[ -d $EXTRA_CA_DIR ]] && find "$EXTRA_CA_DIR" -type f -name '*.crt' | LC_ALL=C sort; }

# A digest of everything the tarball is made from, so that the cache is
# reused until one of them changes (not when Debian publishes updates: the
# stand-in is pinned like a pulled image until its inputs change, or
# RL_PYTHON_BASE_REBUILD=1).
tar_key() {
  local sources f
  sources=$(debian_sources)
  {
    echo "recipe=$RECIPE suite=$SUITE variant=minbase hooks=merged-usr"
    printf 'pkg=%s\n' "${PACKAGES[@]}"
    printf 'dpkg=%s\n' "${DPKG_OPTS[@]}"
    if [[ -n $sources ]]; then echo "sources:"; cat "$sources"; fi
    while read -r f; do [[ -n $f ]] && { echo "ca=${f#"$EXTRA_CA_DIR"/}"; cat "$f"; }; done < <(extra_cas)
  } | sha256sum | cut -c1-16
}

build_tar() { # $1: the tarball to write
  local out=$1 sources args=()
  sources=$(debian_sources)
  # Merged /usr made by mmdebstrap's own hook: without it bookworm's
  # init-system-helpers pulls in the usrmerge package and with it a full
  # Perl (~50 MB) that the official image does not have.
  args+=(--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr)
  local dpkg_opt
  for dpkg_opt in "${DPKG_OPTS[@]}"; do args+=("--dpkgopt=$dpkg_opt"); done
  # In a hook, "$1" is the chroot: mmdebstrap's shell expands it, not this one.
  if [[ -n $(extra_cas) ]]; then
    # Copy the host's extra CAs in and rebuild the bundle in the chroot.
    # shellcheck disable=SC2016
    args+=("--customize-hook=copy-in $EXTRA_CA_DIR /usr/local/share"
           '--customize-hook=chroot "$1" update-ca-certificates')
  fi
  # Nothing from apt's runtime state belongs in an image (mmdebstrap
  # already drops the package lists and the download cache).
  # shellcheck disable=SC2016
  args+=('--customize-hook=rm -rf "$1"/var/log/apt/* "$1"/var/log/dpkg.log "$1"/var/cache/debconf/*-old')
  local tmp="$out.tmp.$$" mlog="$IMAGES/python-base.log"
  log "building a stand-in $IMAGE with mmdebstrap (${sources:-default mirrors}); ~1 min, log $mlog"
  # shellcheck disable=SC2086  # $sources is one path or nothing
  if ! mmdebstrap --quiet --format=tar --variant=minbase --include="$(IFS=,; echo "${PACKAGES[*]}")" \
      "${args[@]}" "$SUITE" "$tmp" $sources >"$mlog" 2>&1; then
    rm -f "$tmp"; log "mmdebstrap failed:"; tail -20 "$mlog" >&2; return 1
  fi
  mv "$tmp" "$out"
}

standin() {
  command -v mmdebstrap >/dev/null || {
    log "no registry answers and mmdebstrap is missing: run 'make kind-deps' (Debian mmdebstrap)"
    return 1
  }
  [[ $(id -u) == 0 ]] || { log "building the stand-in needs root (mmdebstrap)"; return 1; }
  mkdir -p "$IMAGES"
  # One build at a time (the tarball and the tag are shared).
  exec 9>"$IMAGES/.python-base.lock"
  flock 9
  local key tar image_key change
  key=$(tar_key)
  tar="$IMAGES/python-3.11-slim-bookworm-$key.tar"
  image_key=$( { echo "$key"; printf '%s\n' "${CHANGES[@]}"; } | sha256sum | cut -c1-16)
  if [[ $(current_label) == "$image_key" && ${RL_PYTHON_BASE_REBUILD:-0} != 1 ]]; then
    log "$IMAGE is the current stand-in ($image_key)"; return 0
  fi
  if [[ ! -s $tar || ${RL_PYTHON_BASE_REBUILD:-0} == 1 ]]; then
    build_tar "$tar"
    # Tarballs of older inputs are never used again.
    find "$IMAGES" -maxdepth 1 -name 'python-3.11-slim-bookworm-*.tar' ! -name "${tar##*/}" -delete
  else
    log "reusing the cached tarball $tar"
  fi
  local changes=(--change "LABEL $LABEL=$image_key") old new
  for change in "${CHANGES[@]}"; do changes+=(--change "$change"); done
  old=$(docker image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
  new=$(docker import "${changes[@]}" --message "stand-in for $IMAGE built from Debian $SUITE packages" \
    "$tar" "$IMAGE")
  # The stand-in it replaces, unless images built on it still use it.
  if [[ -n $old && $old != "$new" ]]; then docker image rm "$old" >/dev/null 2>&1 || true; fi
  log "imported $IMAGE ($(docker image inspect --format '{{.Size}}' "$IMAGE" | numfmt --to=si)B)"
}

# `docker pull`, given up if the registry has not answered within 20 s (where
# none is reachable it fails at once or hangs); once the registry answers
# ("Pulling from"), the download may take as long as it needs.
pull() {
  local out pid rc=0 waited=0
  out=$(mktemp)
  docker pull "$IMAGE" >"$out" 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    if (( waited >= 20 )) && ! grep -q 'Pulling from' "$out"; then
      kill "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
      rm -f "$out"; return 1
    fi
    sleep 1; waited=$((waited + 1))
  done
  wait "$pid" || rc=$?
  (( rc == 0 )) || log "docker pull $IMAGE: $(tail -1 "$out")"
  rm -f "$out"; return "$rc"
}

# The stand-in label of the local image: empty if it is absent or is a real
# (pulled) image, which is never replaced.
current_label() {
  docker image inspect --format "{{index .Config.Labels \"$LABEL\"}}" "$IMAGE" 2>/dev/null || true
}

main() {
  if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    local label; label=$(current_label)
    if [[ -z $label || $label == "<no value>" ]]; then
      log "$IMAGE is present"
    else
      # A stand-in made here: rebuilt if its inputs changed.
      standin
    fi
  elif pull; then
    log "pulled $IMAGE"
  else
    log "$IMAGE cannot be pulled (no registry answers)"
    standin
  fi
  network_flag
}

main "$@"
