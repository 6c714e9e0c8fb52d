#!/usr/bin/env bash
# Run once while the node image is built (node/Dockerfile): makes the Debian
# rootfs boot as a kind node under systemd.
set -euo pipefail

# systemd as PID 1 of a container: docker and the entrypoint already set up
# /dev, /sys, /proc, /tmp and /run, and there are no consoles, disks or udev.
# Keep only what a node runs; each target's "wants" are what would start.
rm -f /lib/systemd/system/multi-user.target.wants/* \
  /lib/systemd/system/local-fs.target.wants/* \
  /lib/systemd/system/basic.target.wants/* \
  /lib/systemd/system/sockets.target.wants/*udev* \
  /lib/systemd/system/sockets.target.wants/*initctl* \
  /lib/systemd/system/sysinit.target.wants/systemd-tmpfiles-setup.service \
  /etc/systemd/system/*.wants/*
# binfmt_misc is the host's, not the node's.
systemctl mask systemd-binfmt.service >/dev/null
# The kernel log is the host's too.
echo ReadKMsg=no >> /etc/systemd/journald.conf
systemctl enable containerd.service kubelet.service >/dev/null
[[ -e /sbin/init ]] || ln -s /lib/systemd/systemd /sbin/init

mkdir -p /etc/kubernetes/manifests /etc/cni/net.d /opt/cni/bin
# CNI plugins are looked for in /opt/cni/bin (containerd, other CNIs);
# Debian installs them in /usr/lib/cni.
ln -sf /usr/lib/cni/* /opt/cni/bin/

# The base OCI spec of pod containers: containerd's default without its
# rlimits, so that containers get the node's limits as under docker.
ctr oci spec | jq 'del(.process.rlimits)' > /etc/containerd/cri-base.json
