#!/usr/bin/env bash
# ExecStartPre of the kubelet. kind's kubelet config sets cgroupRoot /kubelet
# (kubelet.slice under the systemd driver) so that the pods of a node live
# apart from the node's own services; make sure those cgroups exist.
set -euo pipefail
if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
  # cgroup v2: a group only gets the controllers its parent enables for its
  # children. systemd has by now moved every process out of the root group
  # (into init.scope), so the root's subtree_control can be written.
  enable_all() {
    local wanted; wanted=$(sed -e 's/\([^ ]\+\)/+\1/g' "$1/cgroup.controllers")
    [[ -z $wanted ]] || echo "$wanted" > "$1/cgroup.subtree_control"
  }
  enable_all /sys/fs/cgroup
  for group in kubelet kubelet.slice; do
    mkdir -p "/sys/fs/cgroup/$group"
    enable_all "/sys/fs/cgroup/$group"
  done
else
  # cgroup v1: the entrypoint made /kubelet in every controller hierarchy;
  # systemd's named hierarchy needs it as well.
  mkdir -p /sys/fs/cgroup/systemd/kubelet
fi
