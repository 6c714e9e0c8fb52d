#!/usr/bin/env bash
# Debian packages the kind targets need on this machine, installed only when
# missing (root, apt-get). Docker is left alone where a daemon already runs
# (Docker Desktop, docker-ce): Debian's docker.io is installed only where there
# is neither a daemon nor dockerd. The image-building packages are needed only
# where no registry can be reached (quirks.sh).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=quirks.sh
source "$here/quirks.sh"
want=(jq curl)
if ! timeout 20 docker info >/dev/null 2>&1 && ! command -v dockerd >/dev/null; then
  want+=(docker.io containerd runc)
fi
if ! rl_registry_reachable; then
  want+=(mmdebstrap containernetworking-plugins pigz uidmap gcc libc6-dev nftables)
fi
missing=()
for p in "${want[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
[[ ${#missing[@]} -eq 0 ]] && exit 0
command -v apt-get >/dev/null || { echo "[deps] missing: ${missing[*]} (install them; no apt-get here)" >&2; exit 1; }
[[ $(id -u) == 0 ]] || { echo "[deps] missing: ${missing[*]}; run as root or install them" >&2; exit 1; }
echo "[deps] installing: ${missing[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
