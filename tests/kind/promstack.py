"""The monitoring stack of the kind tier, as tests/kind/test_monitoring.py uses it.

`hack/kind/monitoring.sh` (`make kind-monitoring`) deploys the real Prometheus
Operator and one Prometheus into the namespace `monitoring`; `deploy_stack`
runs it (idempotent, seconds when everything is there). The host cannot route
to pod IPs, so `ProxiedPrometheus` talks to Prometheus through the API
server's service proxy with `kubectl get --raw`.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from kind.kindcluster import REPO, Kind, KindError, tool

NAMESPACE = "monitoring"
SERVICE = "prometheus-operated:9090"
SCRIPT = REPO / "hack" / "kind" / "monitoring.sh"
#: The label kube-prometheus-stack's Prometheus (and ours) selects monitors and rules by.
SELECTOR_LABEL = ("release", "kube-prometheus-stack")


def deploy_stack(kind: Kind, timeout: float = 1800) -> str:
    """Run hack/kind/monitoring.sh against this cluster; its log (stderr).

    Raises KindError with the script's last lines when it fails. A cold run
    builds three images and loads them into the nodes (minutes); a warm one
    only checks.
    """
    env = {**os.environ, "KIND_CLUSTER": kind.name}
    proc = subprocess.run(
        ["bash", str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
        cwd=REPO,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-40:])
        raise KindError(f"bash {SCRIPT.relative_to(REPO)} failed ({proc.returncode}):\n{tail}")
    return proc.stderr


class ProxiedPrometheus:
    """Prometheus's HTTP API through `kubectl get --raw` on the service proxy."""

    def __init__(self, kind: Kind, namespace: str = NAMESPACE, service: str = SERVICE) -> None:
        self.kind = kind
        self.base = f"/api/v1/namespaces/{namespace}/services/{service}/proxy"

    def raw(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        proc = self.kind.kubectl("get", "--raw", f"{self.base}{path}{query}", check=False)
        if proc.returncode != 0:
            raise KindError(f"GET {path} {params}: {proc.stderr.strip()[:1000]}")
        return json.loads(proc.stdout)

    def api(self, path: str, **params: str) -> Any:
        body = self.raw(f"/api/v1/{path}", **params)
        if body.get("status") != "success":
            raise KindError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the result vector (a scalar becomes one sample)."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def poll(
        self,
        expr: str,
        deadline_s: float,
        predicate: Callable[[list[dict[str, Any]]], object] = bool,
    ) -> list[dict[str, Any]]:
        """Query until `predicate(result)` holds or the deadline passes; the last
        result, so the caller's assertion shows what Prometheus answered."""
        end = time.monotonic() + deadline_s
        result = self.query(expr)
        while not predicate(result) and time.monotonic() < end:
            time.sleep(0.5)
            result = self.query(expr)
        return result

    def active_targets(self) -> list[dict[str, Any]]:
        """`/api/v1/targets` active targets (labels, discoveredLabels, health, scrapePool)."""
        targets: list[dict[str, Any]] = self.api("targets", state="active")["activeTargets"]
        return targets

    def rule_groups(self) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = self.api("rules")["groups"]
        return groups

    def build_version(self) -> str:
        return str(self.api("status/buildinfo")["version"])


def conntrack_flush_from(kind: Kind, node: str, ip: str) -> None:
    """Forget the connections `ip` opened (on the kind node `node` it runs on).

    kube-network-policies accepts packets of established connections before
    it asks the policies, so a pod's kept-alive connections to its peers would
    outlive a new egress policy; without their conntrack entries the next
    packet is judged as new. `conntrack -D` exits 1 when nothing matched.
    """
    proc = subprocess.run(
        [tool("docker"), "exec", node, "conntrack", "-D", "-s", ip],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if proc.returncode not in (0, 1):
        raise KindError(f"conntrack -D -s {ip} on {node}: {proc.stderr.strip()[:500]}")
