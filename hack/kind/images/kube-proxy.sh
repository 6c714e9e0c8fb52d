#!/bin/sh
# kube-proxy in the reactive-loop kind node image (as /usr/local/bin/kube-proxy,
# where kubeadm's DaemonSet runs it): first point iptables at the backend the
# node uses, as upstream's image does, so that both write the same tables.
set -e
/usr/local/bin/rl-iptables-mode >/dev/null
exec /usr/local/libexec/kube-proxy "$@"
