#!/usr/bin/env bash
# Make sure a Docker daemon answers, for `make images` and the kind targets.
#
#   hack/kind/docker.sh up      use the running daemon, or start a private one
#   hack/kind/docker.sh down    stop the private daemon (only if we started it)
#   hack/kind/docker.sh status
#
# On a normal machine Docker already runs and `up` only checks it. Where no
# daemon runs (this project's CI machines), `up` starts Debian's dockerd with
# its data in the cache and, so that it leaves the host's firewall and the
# local test cluster's bridge alone, without managing iptables, NAT, IP
# forwarding or the default bridge. kind then gets a user-defined bridge
# network made here in advance. Sandbox quirks come from quirks.sh.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=quirks.sh
source "$here/quirks.sh"
CACHE="${RL_CACHE:-$HOME/.cache/reactive-loop}"
STATE="$CACHE/docker"
PIDFILE="$STATE/dockerd.pid"
LOG="$STATE/dockerd.log"
SOCK=/var/run/docker.sock
KIND_SUBNET="${KIND_DOCKER_SUBNET:-172.18.0.0/16}"

log() { printf '[docker] %s\n' "$*" >&2; }

answers() { timeout 20 docker info >/dev/null 2>&1; }

ours() { [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

# A runc that drops, from every container and exec it starts, the capabilities
# this machine's bounding set lacks; Docker would ask for them for
# `--privileged` (what kind's node containers are) and fail.
write_runc_wrapper() {
  local missing_json wrapper="$STATE/runc-capfilter"
  missing_json=$(rl_missing_caps | jq -R . | jq -sc .)
  cat > "$wrapper" <<WRAP
#!/usr/bin/env bash
# Written by hack/kind/docker.sh: runc minus capabilities the bounding set lacks.
missing='$missing_json'
filter() { # \$1: a JSON file, \$2: the jq path of a capabilities object
  [[ -f \$1 ]] || return 0
  jq --argjson m "\$missing" "\$2 |= (if . == null then . else with_entries(.value |= ((. // []) - \\\$m)) end)" "\$1" > "\$1.rl" && mv "\$1.rl" "\$1"
}
args=("\$@")
for ((i = 0; i < \${#args[@]}; i++)); do
  case "\${args[\$i]}" in
    --bundle|-b) filter "\${args[\$((i + 1))]}/config.json" .process.capabilities ;;
    --bundle=*) filter "\${args[\$i]#--bundle=}/config.json" .process.capabilities ;;
    --process|-p) filter "\${args[\$((i + 1))]}" .capabilities ;;
    --process=*) filter "\${args[\$i]#--process=}" .capabilities ;;
  esac
done
exec $(command -v runc) "\$@"
WRAP
  chmod 0755 "$wrapper"
  echo "$wrapper"
}

up() {
  if answers; then
    log "a Docker daemon answers ($(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?'))"
    return 0
  fi
  if [[ -n ${DOCKER_HOST:-} ]]; then
    log "DOCKER_HOST=$DOCKER_HOST does not answer; not starting a daemon of our own"; exit 1
  fi
  command -v dockerd >/dev/null || { log "no dockerd: run 'make kind-deps' (Debian docker.io)"; exit 1; }
  [[ $(id -u) == 0 ]] || { log "no Docker daemon answers, and starting one needs root"; exit 1; }
  if [[ -S $SOCK ]]; then
    # A socket nobody serves is what a daemon killed without its clean-up
    # leaves; one that a running dockerd owns is not ours to replace.
    if pgrep -x dockerd >/dev/null; then log "a dockerd runs but $SOCK does not answer"; exit 1; fi
    log "removing the stale $SOCK (no dockerd runs)"; rm -f "$SOCK"
  fi
  mkdir -p "$STATE/data" /run/rl-docker
  local extra=()
  if [[ -n $(rl_missing_caps | grep -x CAP_SYS_RESOURCE || true) ]]; then
    local wrapper; wrapper=$(write_runc_wrapper)
    log "bounding set lacks $(rl_missing_caps | paste -sd, -): privileged containers run through $wrapper"
    extra+=(--add-runtime "rl-runc=$wrapper" --default-runtime rl-runc)
  fi
  log "starting a private dockerd (data in $STATE/data, log $LOG)"
  setsid dockerd --host "unix://$SOCK" --data-root "$STATE/data" --exec-root /run/rl-docker \
    --pidfile "$PIDFILE" --iptables=false --ip-masq=false --ip-forward=false --bridge=none \
    --storage-driver overlay2 --exec-opt native.cgroupdriver=cgroupfs "${extra[@]}" \
    </dev/null >"$LOG" 2>&1 &
  local deadline=$((SECONDS + 60))
  until answers; do
    if (( SECONDS > deadline )); then log "dockerd did not answer within 60 s:"; tail -20 "$LOG" >&2; exit 1; fi
    sleep 0.5
  done
  # kind would make this network itself with IP masquerading, which a daemon
  # that does not manage iptables cannot do; made here, kind just uses it.
  if ! docker network inspect kind >/dev/null 2>&1; then
    docker network create --driver bridge --subnet "$KIND_SUBNET" \
      --opt com.docker.network.bridge.enable_ip_masquerade=false \
      --opt com.docker.network.driver.mtu="$(cat /sys/class/net/"$(ip route show default | awk '{print $5; exit}')"/mtu 2>/dev/null || echo 1500)" \
      kind >/dev/null
  fi
  log "dockerd ready (pid $(cat "$PIDFILE"))"
}

down() {
  if ! ours; then log "no private dockerd of ours runs"; return 0; fi
  local pid; pid=$(cat "$PIDFILE")
  log "stopping the private dockerd (pid $pid)"
  kill "$pid"
  local deadline=$((SECONDS + 60))
  while kill -0 "$pid" 2>/dev/null; do
    (( SECONDS > deadline )) && { log "dockerd still runs after 60 s"; exit 1; }
    sleep 0.5
  done
}

status() {
  if ours; then log "private dockerd pid $(cat "$PIDFILE")"; fi
  if answers; then log "daemon answers"; else log "no daemon answers"; exit 1; fi
}

case "${1:-up}" in
  up) up ;; down) down ;; status) status ;;
  *) log "usage: $0 up|down|status"; exit 2 ;;
esac
