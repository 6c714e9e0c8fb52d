"""The kind cluster of the README's quickstart, as the kind tests see it.

`make test-kind` runs `make kind-up deploy demo` first; these helpers only talk
to that cluster, always through its own kube context (never the current one),
and never start or stop it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from localcluster.cluster import wait_for

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
TOOLS_BIN = Path(os.environ.get("RL_CACHE", Path.home() / ".cache" / "reactive-loop")) / "bin"


class KindError(AssertionError):
    """A kubectl, helm or docker call failed, or a tool is missing."""


def tool(name: str) -> str:
    found = shutil.which(name, path=f"{TOOLS_BIN}:{os.environ.get('PATH', '')}")
    if not found:
        raise KindError(f"{name} not found: `make kind-tools` builds it")
    return found


class Kind:
    """One kind cluster: `kubectl`, `docker exec` into its nodes, polling."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.context = f"kind-{name}"

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [tool("kubectl"), "--context", self.context, *args],
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise KindError(f"kubectl {' '.join(args)}: {proc.stderr.strip()[:2000]}")
        return proc

    def get(self, *args: str) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.kubectl("get", *args, "-o", "json").stdout)
        return out

    def apply(self, manifest: str, namespace: str | None = None) -> None:
        ns = ["-n", namespace] if namespace else []
        self.kubectl("apply", *ns, "-f", "-", input=manifest)

    def helm(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [tool("helm"), "--kube-context", self.context, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )

    def nodes(self, role: str) -> list[str]:
        """Names of the kind nodes (docker containers) with this role label."""
        selector = (
            "node-role.kubernetes.io/control-plane"
            if role == "control-plane"
            else "!node-role.kubernetes.io/control-plane"
        )
        items = self.get("nodes", "-l", selector)["items"]
        return sorted(str(n["metadata"]["name"]) for n in items)

    def node_exec(self, node: str, *argv: str, timeout: float = 30) -> str:
        """Run a command inside a kind node container (as its root)."""
        proc = subprocess.run(
            [tool("docker"), "exec", node, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise KindError(f"docker exec {node} {' '.join(argv)}: {proc.stderr.strip()[:1000]}")
        return proc.stdout

    def container_pid(self, namespace: str, pod: str) -> tuple[str, int]:
        """(kind node, host PID inside that node) of the pod's first container."""
        obj = self.get("pod", "-n", namespace, pod)
        node = str(obj["spec"]["nodeName"])
        container_id = str(obj["status"]["containerStatuses"][0]["containerID"]).split("://")[-1]
        for line in self.node_exec(node, "ctr", "-n", "k8s.io", "task", "ls").splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == container_id:
                return node, int(fields[1])
        raise KindError(f"no running task for {namespace}/{pod} ({container_id}) on {node}")

    @staticmethod
    def wait_for(
        condition: Callable[[], T | None],
        timeout: float = 60,
        interval: float = 0.5,
        what: str = "condition",
    ) -> T:
        """Poll until `condition` returns something truthy (localcluster's poller)."""
        return wait_for(condition, timeout, interval, what)


def condition(obj: dict[str, Any], kind: str) -> str | None:
    """The status ("True"/"False"/"Unknown") of one condition of an object, if present."""
    for cond in obj.get("status", {}).get("conditions", []) or []:
        if cond.get("type") == kind:
            return str(cond.get("status"))
    return None
