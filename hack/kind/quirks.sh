# shellcheck shell=bash
# Every workaround for a machine that is not a normal Docker host lives here,
# and each one is applied only when its cause is detected. On a laptop or a CI
# runner with a working Docker daemon and a registry, none of them applies and
# the kind targets behave exactly as upstream kind does.
#
# Sourced by hack/kind/docker.sh (on the host) and by the kind node image's
# entrypoint (inside every kind node container), so both sides read the same
# rules.

# Capability names by number (linux/capability.h), to name what is missing.
RL_CAP_NAMES=(CAP_CHOWN CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_FOWNER CAP_FSETID
  CAP_KILL CAP_SETGID CAP_SETUID CAP_SETPCAP CAP_LINUX_IMMUTABLE CAP_NET_BIND_SERVICE
  CAP_NET_BROADCAST CAP_NET_ADMIN CAP_NET_RAW CAP_IPC_LOCK CAP_IPC_OWNER CAP_SYS_MODULE
  CAP_SYS_RAWIO CAP_SYS_CHROOT CAP_SYS_PTRACE CAP_SYS_PACCT CAP_SYS_ADMIN CAP_SYS_BOOT
  CAP_SYS_NICE CAP_SYS_RESOURCE CAP_SYS_TIME CAP_SYS_TTY_CONFIG CAP_MKNOD CAP_LEASE
  CAP_AUDIT_WRITE CAP_AUDIT_CONTROL CAP_SETFCAP CAP_MAC_OVERRIDE CAP_MAC_ADMIN
  CAP_SYSLOG CAP_WAKE_ALARM CAP_BLOCK_SUSPEND CAP_AUDIT_READ CAP_PERFMON CAP_BPF
  CAP_CHECKPOINT_RESTORE)

# The capabilities this process's bounding set lacks, one name per line.
# A sandbox may run us without some of them (seen: CAP_SYS_RESOURCE). Docker
# 20.10 then fails every `--privileged` container ("unable to apply caps:
# operation not permitted"), because it asks runc for all known capabilities.
rl_missing_caps() {
  local hex i
  hex=$(awk '/^CapBnd:/ {print $2}' /proc/self/status)
  for i in "${!RL_CAP_NAMES[@]}"; do
    if (( ( 0x$hex >> i & 1 ) == 0 )); then echo "${RL_CAP_NAMES[$i]}"; fi
  done
}

# Does any cgroup v1 controller hierarchy exist? Kubernetes 1.35's kubelet
# refuses cgroup v1 unless told (kind-config.yaml sets failCgroupV1: false,
# which cgroup v2 machines ignore).
rl_cgroup_v1() { [[ ! -f /sys/fs/cgroup/cgroup.controllers ]]; }

# Can this process lower a process's oom_score_adj below its own? That needs
# CAP_SYS_RESOURCE; without it every pod sandbox fails ("can't get final
# child's PID from pipe") because containerd asks for -998 for the pause
# container. containerd's restrict_oom_score_adj clamps the request instead.
# (A here-string, not a pipe: grep -q may exit before rl_missing_caps has
# written all its lines, and under pipefail that SIGPIPE made the answer "no"
# at random.)
rl_need_restrict_oom_score_adj() { grep -qx CAP_SYS_RESOURCE <<<"$(rl_missing_caps)"; }

# Can this machine pull from the registries kind and the Dockerfiles use?
# Where it cannot (this project's CI machines reach only package registries),
# the kind node image and the Python base image are built here instead.
rl_registry_reachable() {
  local code
  code=$(curl -s -o /dev/null --max-time 8 -w '%{http_code}' https://registry.k8s.io/v2/ || true)
  [[ $code != 000 ]]
}

# Does this kernel lack nftables' "queue" expression (CONFIG_NFT_QUEUE unset,
# seen on 6.18 here) while xtables' NFQUEUE target is there? NetworkPolicy
# enforcement by kube-network-policies queues packets to user space, so its
# build then gets hack/kind/kube-network-policies-xt-nfqueue.patch. Asked of
# `nft` in a throw-away network namespace where possible, else of the
# kernel's config; when neither can tell, the kernel is taken as normal.
rl_need_xt_nfqueue() {
  if command -v nft >/dev/null 2>&1 && unshare --net true 2>/dev/null; then
    ! unshare --net nft -f - >/dev/null 2>&1 <<'NFT'
table inet rl_queue_probe {
  chain probe { type filter hook postrouting priority 0; queue num 100 bypass; }
}
NFT
    return
  fi
  if [[ -r /proc/config.gz ]]; then
    local config; config=$(zcat /proc/config.gz)
    ! grep -qE '^CONFIG_NFT_QUEUE=(y|m)$' <<<"$config" \
      && grep -qE '^CONFIG_NETFILTER_XT_TARGET_NFQUEUE=(y|m)$' <<<"$config"
    return
  fi
  return 1
}
