"""Faults for chaos tests: cut a pod's network, restore it, kill its process.

A cut is a set of iptables DROP rules in the pod's own network namespace, in
a chain `RL-FAULT` jumped to from INPUT and OUTPUT; `restore` flushes that
chain. Dropped (not rejected) packets make requests time out, as a real
partition does. By default the host side of the bridge (the gateway: the
apiserver, kubelet probes, a Prometheus on the host) stays reachable, so a cut
pod is partitioned from its peers without being restarted by its liveness
probe; `include_host=True` cuts that too. Rules vanish with the namespace.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from localcluster.config import ClusterConfig

CHAIN = "RL-FAULT"


class FaultError(RuntimeError):
    """The pod is not running here, or a rule could not be applied."""


@dataclass(frozen=True)
class PodHandle:
    """What the kubelet recorded about a running pod (`pods/<uid>/state.json`)."""

    namespace: str
    name: str
    uid: str
    ip: str
    netns: str
    containers: dict[str, int]
    directory: Path


def split_ref(ref: str, default_namespace: str = "default") -> tuple[str, str]:
    """`ns/name` or `name` -> (namespace, name)."""
    ns, _, name = ref.rpartition("/")
    return (ns or default_namespace), name


def find_pod(cfg: ClusterConfig, namespace: str, name: str) -> PodHandle:
    best: tuple[float, PodHandle] | None = None
    for state in cfg.pods_dir.glob("*/state.json"):
        try:
            data = json.loads(state.read_text())
        except (OSError, ValueError):
            continue
        if data.get("namespace") != namespace or data.get("name") != name:
            continue
        if data.get("terminated") or not data.get("netns"):
            continue
        handle = PodHandle(
            namespace=namespace,
            name=name,
            uid=data["uid"],
            ip=data["ip"],
            netns=data["netns"],
            containers={k: int(v) for k, v in (data.get("containers") or {}).items()},
            directory=state.parent,
        )
        mtime = state.stat().st_mtime
        if best is None or mtime > best[0]:
            best = (mtime, handle)
    if best is None:
        raise FaultError(f"pod {namespace}/{name} is not running on the local cluster")
    return best[1]


def _ipt(netns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["ip", "netns", "exec", netns, "iptables", "-w", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if check and proc.returncode != 0:
        raise FaultError(f"iptables {' '.join(args)} in {netns}: {proc.stderr.strip()}")
    return proc


def _ensure_chain(netns: str) -> None:
    if _ipt(netns, "-n", "-L", CHAIN, check=False).returncode != 0:
        _ipt(netns, "-N", CHAIN)
    for hook in ("INPUT", "OUTPUT"):
        if _ipt(netns, "-C", hook, "-j", CHAIN, check=False).returncode != 0:
            _ipt(netns, "-I", hook, "1", "-j", CHAIN)


def cut_rules(gateway_ip: str, peer_ip: str | None, include_host: bool) -> list[list[str]]:
    """The DROP rules of a cut (pure, for tests)."""
    if peer_ip is not None:
        return [
            ["-i", "eth0", "-s", peer_ip, "-j", "DROP"],
            ["-o", "eth0", "-d", peer_ip, "-j", "DROP"],
        ]
    if include_host:
        return [["-i", "eth0", "-j", "DROP"], ["-o", "eth0", "-j", "DROP"]]
    return [
        ["-i", "eth0", "!", "-s", gateway_ip, "-j", "DROP"],
        ["-o", "eth0", "!", "-d", gateway_ip, "-j", "DROP"],
    ]


class Faults:
    """Fault injection bound to one cluster; pods are named by namespace and name."""

    def __init__(self, cfg: ClusterConfig) -> None:
        self.cfg = cfg

    def pod(self, namespace: str, name: str) -> PodHandle:
        return find_pod(self.cfg, namespace, name)

    def cut(
        self, namespace: str, name: str, peer: str | None = None, include_host: bool = False
    ) -> None:
        """Drop all traffic of the pod (or only to/from pod `peer`, same namespace)."""
        pod = self.pod(namespace, name)
        peer_ip = self.pod(namespace, peer).ip if peer else None
        _ensure_chain(pod.netns)
        for rule in cut_rules(self.cfg.gateway_ip, peer_ip, include_host):
            if _ipt(pod.netns, "-C", CHAIN, *rule, check=False).returncode != 0:
                _ipt(pod.netns, "-A", CHAIN, *rule)

    def restore(self, namespace: str, name: str) -> None:
        """Remove every cut of the pod."""
        pod = self.pod(namespace, name)
        if _ipt(pod.netns, "-n", "-L", CHAIN, check=False).returncode == 0:
            _ipt(pod.netns, "-F", CHAIN)

    def is_cut(self, namespace: str, name: str) -> bool:
        pod = self.pod(namespace, name)
        proc = _ipt(pod.netns, "-S", CHAIN, check=False)
        return proc.returncode == 0 and "-j DROP" in proc.stdout

    def kill(
        self, namespace: str, name: str, container: str | None = None, sig: int = signal.SIGKILL
    ) -> list[int]:
        """Signal the pod's container process(es); the kubelet then applies restartPolicy."""
        pod = self.pod(namespace, name)
        targets = {k: v for k, v in pod.containers.items() if container in (None, k)}
        if not targets:
            raise FaultError(f"no running container {container or ''} in {namespace}/{name}")
        killed = []
        for pid in targets.values():
            try:
                os.killpg(pid, sig)
                killed.append(pid)
            except ProcessLookupError:
                continue
        return killed
