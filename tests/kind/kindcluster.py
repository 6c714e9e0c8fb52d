"""The kind cluster of the README's quickstart, as the kind tests see it.

`make test-kind` runs `make kind-up deploy demo` first; these helpers only talk
to that cluster, always through its own kube context (never the current one),
and never start or stop it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
TOOLS_BIN = Path(os.environ.get("RL_CACHE", Path.home() / ".cache" / "reactive-loop")) / "bin"


class KindError(AssertionError):
    """A kubectl, helm or docker call failed, or a tool is missing."""


class WaitTimeout(AssertionError):
    """`Kind.wait_for` ran out of time; the message names the condition."""


def wait_for(
    condition: Callable[[], T | None],
    timeout: float = 60,
    interval: float = 0.5,
    what: str = "condition",
) -> T:
    """Poll `condition` until it returns something truthy and return that.

    An exception raised by the condition counts as "not yet" (objects appear
    and go while we poll); the last one is named if time runs out.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except Exception as e:  # the condition may race with the cluster
            last_error = e
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_error})" if last_error else ""
            raise WaitTimeout(f"timed out after {timeout}s waiting for {what}{extra}")
        time.sleep(interval)


def tool(name: str) -> str:
    found = shutil.which(name, path=f"{TOOLS_BIN}:{os.environ.get('PATH', '')}")
    if not found:
        raise KindError(f"{name} not found: `make kind-tools` builds it")
    return found


class Kind:
    """One kind cluster: `kubectl`, `helm`, `docker exec` into its nodes, faults, polling."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.context = f"kind-{name}"
        self.faults = Faults(self)

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

    def find(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """`kubectl get` of one object, None if it does not exist."""
        where = ["-n", namespace] if namespace else []
        proc = self.kubectl("get", kind, name, *where, "-o", "json", check=False)
        if proc.returncode != 0:
            if "NotFound" in proc.stderr:
                return None
            raise KindError(f"kubectl get {kind} {name} {' '.join(where)}: {proc.stderr.strip()}")
        out: dict[str, Any] = json.loads(proc.stdout)
        return out

    def apply(self, manifest: str, namespace: str | None = None) -> None:
        ns = ["-n", namespace] if namespace else []
        self.kubectl("apply", *ns, "-f", "-", input=manifest)

    def helm(
        self, *args: str, check: bool = True, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [tool("helm"), "--kube-context", self.context, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise KindError(f"helm {' '.join(args)}: {proc.stderr.strip()[:2000]}")
        return proc

    def create_namespace(self, name: str, *labels: str) -> None:
        """Create a namespace with labels; wait for its `default` ServiceAccount."""
        self.kubectl("create", "namespace", name)
        if labels:
            self.kubectl("label", "namespace", name, *labels)
        self.wait_for(
            lambda: self.find("serviceaccount", "default", name),
            timeout=30,
            what=f"the default ServiceAccount of namespace {name}",
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

    def pod_cidrs(self) -> list[str]:
        """Every node's pod CIDR: together, the addresses any pod can have."""
        items = self.get("nodes")["items"]
        return sorted({str(c) for n in items for c in n["spec"].get("podCIDRs") or []})

    def gateway(self) -> str:
        """The host's address on the kind docker network: pods reach the host there."""
        proc = subprocess.run(
            [tool("docker"), "network", "inspect", "kind"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if proc.returncode != 0:
            raise KindError(f"docker network inspect kind: {proc.stderr.strip()}")
        for config in json.loads(proc.stdout)[0]["IPAM"]["Config"] or []:
            gateway = str(config.get("Gateway") or "")
            if gateway and ipaddress.ip_address(gateway).version == 4:
                return gateway
        # Some daemons leave the gateway out of the network's IPAM config (it
        # is then the bridge's address): a kind node's default route names it.
        route = self.node_exec(
            self.nodes("control-plane")[0], "ip", "-4", "route", "show", "default"
        )
        words = route.split()
        if len(words) >= 3 and words[:2] == ["default", "via"]:
            return words[2]
        raise KindError(f"the kind docker network has no IPv4 gateway (default route: {route!r})")

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

    def pod_exec(
        self, namespace: str, pod: str, *argv: str, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """`kubectl exec` in the pod's first container (the image's own user and files)."""
        return self.kubectl("exec", "-n", namespace, pod, "--", *argv, timeout=timeout)

    def proxy_get(self, namespace: str, pod: str, port: int, path: str) -> str:
        """GET a pod's HTTP endpoint through the API server's pod proxy.

        The host cannot route to pod IPs; the API server can (where no
        NetworkPolicy cuts it off, as the node pods' policy does by design).
        """
        raw = f"/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy/{path.lstrip('/')}"
        return self.kubectl("get", "--raw", raw, timeout=20).stdout

    def container_pid(self, namespace: str, pod: str) -> tuple[str, int]:
        """(kind node, host PID inside that node) of the pod's first container."""
        obj = self.get("pod", "-n", namespace, pod)
        node = str(obj["spec"]["nodeName"])
        container_id = str(obj["status"]["containerStatuses"][0]["containerID"]).split("://")[-1]
        for line in self.node_exec(node, "ctr", "-n", "k8s.io", "task", "ls").splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == container_id and fields[2] == "RUNNING":
                return node, int(fields[1])
        raise KindError(f"no running task for {namespace}/{pod} ({container_id}) on {node}")

    @contextlib.contextmanager
    def fence_out(self, username: str, label: str) -> Iterator[str]:
        """Refuse every write by `username` in namespaces labelled `label` (k=v).

        A ValidatingAdmissionPolicy and its binding, removed on exit. The
        quickstart's operator watches every namespace; the tests that run an
        operator of their own fence it out of their namespaces with this, so
        what they see is their operator's doing alone.
        """
        key, _, value = label.partition("=")
        name = f"rl-test-fence-{secrets.token_hex(3)}"
        policy = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": ["*"],
                            "apiVersions": ["*"],
                            "operations": ["CREATE", "UPDATE", "DELETE"],
                            "resources": ["*/*"],
                        }
                    ]
                },
                "validations": [
                    {
                        "expression": f"request.userInfo.username != {json.dumps(username)}",
                        "message": f"{username} is fenced out of this test namespace",
                        "reason": "Forbidden",
                    }
                ],
            },
        }
        binding = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name},
            "spec": {
                "policyName": name,
                "validationActions": ["Deny"],
                "matchResources": {"namespaceSelector": {"matchLabels": {key: value}}},
            },
        }
        try:
            self.apply(json.dumps({"apiVersion": "v1", "kind": "List", "items": [policy, binding]}))
            yield name
        finally:
            for kind in ("validatingadmissionpolicybinding", "validatingadmissionpolicy"):
                self.kubectl("delete", kind, name, "--ignore-not-found", check=False)

    @staticmethod
    def wait_for(
        condition: Callable[[], T | None],
        timeout: float = 60,
        interval: float = 0.5,
        what: str = "condition",
    ) -> T:
        """Poll until `condition` returns something truthy (see `wait_for`)."""
        return wait_for(condition, timeout, interval, what)


#: Chains of a partition inside a pod's network namespace.
CUT_IN, CUT_OUT = "RL-CUT-IN", "RL-CUT-OUT"


@dataclass
class Partition:
    """A pod cut off from every other pod by iptables rules in its own network
    namespace (see `Faults.partition`); `restore` removes them."""

    kind: Kind
    namespace: str
    pod: str
    include_node: bool = False
    restored: bool = field(default=False, init=False)

    def _rules(self) -> str:
        node_ip, cidrs = self._addresses()
        lines = []
        for chain, hook, where, iface in (
            (CUT_IN, "INPUT", "-s", "-i"),
            (CUT_OUT, "OUTPUT", "-d", "-o"),
        ):
            lines += [f"iptables -N {chain}", f"iptables -A {chain} {iface} lo -j RETURN"]
            if not self.include_node:
                # The node itself (kubelet probes come from its side of the
                # pod's veth): a partitioned pod stays Ready and alive.
                lines.append(f"iptables -A {chain} {where} {node_ip} -j RETURN")
            lines += [f"iptables -A {chain} {where} {c} -j DROP" for c in cidrs]
            lines.append(f"iptables -I {hook} 1 -j {chain}")
        return " && ".join(lines)

    def _addresses(self) -> tuple[str, list[str]]:
        node, pid = self.kind.container_pid(self.namespace, self.pod)
        route = self.kind.node_exec(node, "nsenter", "-t", str(pid), "-n", "ip", "-4", "route")
        gateway = next(
            (line.split()[2] for line in route.splitlines() if line.startswith("default via ")),
            None,
        )
        if gateway is None:
            raise KindError(f"no default route in {self.namespace}/{self.pod}: {route!r}")
        return gateway, self.kind.pod_cidrs()

    def _nsenter(self, script: str) -> None:
        node, pid = self.kind.container_pid(self.namespace, self.pod)
        self.kind.node_exec(node, "nsenter", "-t", str(pid), "-n", "sh", "-c", script)

    def cut(self) -> None:
        self._nsenter(self._rules())

    def restore(self) -> None:
        """Remove the rules; a pod (or container) already gone counts as restored."""
        if self.restored:
            return
        script = " ; ".join(
            f"iptables -D {hook} -j {chain} 2>/dev/null ; iptables -F {chain} 2>/dev/null"
            f" ; iptables -X {chain} 2>/dev/null"
            for chain, hook in ((CUT_IN, "INPUT"), (CUT_OUT, "OUTPUT"))
        )
        try:
            self._nsenter(script + " ; ! iptables -S | grep -q RL-CUT")
        except KindError:
            pod = self.kind.find("pod", self.pod, self.namespace)
            statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or []
            if pod is not None and statuses and statuses[0].get("state", {}).get("running"):
                raise
        self.restored = True


class Faults:
    """Faults of the kind tier: a pod deleted, its container killed through the
    node's container runtime, a pod partitioned from every other pod."""

    def __init__(self, kind: Kind) -> None:
        self.kind = kind

    def delete_pod(self, namespace: str, pod: str) -> str:
        """Delete a pod (without waiting); returns its UID to tell the new one by."""
        uid = str(self.kind.get("pod", "-n", namespace, pod)["metadata"]["uid"])
        self.kind.kubectl("delete", "pod", "-n", namespace, pod, "--wait=false")
        return uid

    def kill(self, namespace: str, pod: str) -> int:
        """SIGKILL the pod's first container through containerd, as an OOM kill or
        a crash ends it; returns the restart count it had before."""
        obj = self.kind.get("pod", "-n", namespace, pod)
        status = obj["status"]["containerStatuses"][0]
        container_id = str(status["containerID"]).split("://")[-1]
        node = str(obj["spec"]["nodeName"])
        self.kind.node_exec(
            node, "ctr", "-n", "k8s.io", "task", "kill", "-s", "SIGKILL", container_id
        )
        return int(status["restartCount"])

    @contextlib.contextmanager
    def partition(
        self, namespace: str, pod: str, *, include_node: bool = False
    ) -> Iterator[Partition]:
        """Cut `pod` off from every pod (both ways: requests to it and from it to
        any pod IP time out), always restored on exit.

        DROP rules in the pod's own network namespace, entered with nsenter in
        its kind node. Its node (kubelet probes) stays reachable unless
        `include_node`; Services' virtual IPs (the API server, DNS) are not pod
        addresses and stay reachable too.
        """
        cut = Partition(self.kind, namespace, pod, include_node)
        try:
            cut.cut()
            yield cut
        finally:
            cut.restore()


def condition(obj: dict[str, Any], kind: str) -> str | None:
    """The status ("True"/"False"/"Unknown") of one condition of an object, if present."""
    for cond in obj.get("status", {}).get("conditions", []) or []:
        if cond.get("type") == kind:
            return str(cond.get("status"))
    return None
