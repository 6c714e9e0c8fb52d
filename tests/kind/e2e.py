"""The kind tier's own operator release and the loops a test applies through it.

Shared by test_operator_e2e.py and test_examples.py; the fixtures `operator`
(session) and `loops` that hand these out are in conftest.py. The session's
operator is a helm release of its own in a fresh namespace that enforces Pod
Security `restricted`, watching only that namespace; the quickstart's
operator is fenced out of it (conftest `fence`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import yaml
from kind.kindcluster import REPO, Kind, KindError

EXAMPLES = REPO / "examples"
OPERATOR_RELEASE = "rlop"
RESYNC_SECONDS = 2
OPERATOR_SELECTOR = (
    f"app.kubernetes.io/instance={OPERATOR_RELEASE},app.kubernetes.io/component=operator"
)


@dataclass
class Operator:
    """The session's operator release; its pods are asked through the API server."""

    kind: Kind
    namespace: str

    @property
    def name(self) -> str:
        """The chart names the Deployment and the Lease after its full name."""
        return f"{OPERATOR_RELEASE}-reactive-loop"

    def pods(self) -> list[str]:
        items = self.kind.get("pods", "-n", self.namespace, "-l", OPERATOR_SELECTOR)["items"]
        return sorted(
            str(p["metadata"]["name"]) for p in items if not p["metadata"].get("deletionTimestamp")
        )

    def phase(self, pod: str) -> str | None:
        """The phase /readyz reports (standby, leading), None while it is not ready."""
        try:
            return str(
                json.loads(self.kind.proxy_get(self.namespace, pod, 8080, "readyz"))["phase"]
            )
        except (KindError, ValueError, KeyError):
            return None

    def phases(self) -> dict[str, str | None]:
        return {pod: self.phase(pod) for pod in self.pods()}

    def settle(self, replicas: int) -> str:
        """Wait for `replicas` operator pods, one leading and the others standby;
        return the leader's name."""

        def settled() -> str | None:
            phases = self.phases()
            roles = sorted(str(p) for p in phases.values())
            if roles != sorted(["leading"] + ["standby"] * (replicas - 1)):
                return None
            return next(pod for pod, phase in phases.items() if phase == "leading")

        return self.kind.wait_for(
            settled, timeout=180, what=f"{replicas} operator pod(s), one leading"
        )

    def scale(self, replicas: int) -> None:
        self.kind.kubectl(
            "scale", "deployment", self.name, "-n", self.namespace, f"--replicas={replicas}"
        )

    def metrics(self) -> str:
        return self.kind.proxy_get(self.namespace, self.settle(1), 8080, "metrics")

    def reconciles(self, result: str = "ok") -> float:
        """The leader's `reactive_loop_operator_reconciles_total{result=...}`."""
        wanted = f'reactive_loop_operator_reconciles_total{{result="{result}"}} '
        for line in self.metrics().splitlines():
            if line.startswith(wanted):
                return float(line.split()[-1])
        raise AssertionError(f"no {wanted.strip()} in the operator's metrics")


@dataclass
class Loops:
    """Applies ReactiveLoops in the operator's namespace and removes them afterwards."""

    kind: Kind
    namespace: str
    names: list[str] = field(default_factory=list)

    def apply(self, manifest: dict[str, Any]) -> str:
        name = str(manifest["metadata"]["name"])
        self.kind.apply(yaml.safe_dump(manifest), self.namespace)
        self.names.append(name)
        return name

    def get(self, name: str) -> dict[str, Any]:
        obj = self.kind.find("reactiveloop", name, self.namespace)
        assert obj is not None, f"ReactiveLoop {name} is gone"
        return obj

    def patch(self, name: str, spec: dict[str, Any]) -> int:
        """Merge-patch the loop's spec with kubectl; returns the new generation."""
        self.kind.kubectl(
            "patch", "rl", name, "-n", self.namespace, "--type=merge",
            "-p", json.dumps({"spec": spec}),
        )  # fmt: skip
        return int(self.get(name)["metadata"]["generation"])

    def condition(self, name: str, kind: str) -> dict[str, Any] | None:
        for cond in self.get(name).get("status", {}).get("conditions") or []:
            if cond["type"] == kind:
                return dict(cond)
        return None

    def pods(self, name: str) -> list[dict[str, Any]]:
        items = self.kind.get("pods", "-n", self.namespace, "-l", f"reactive-loop.dev/loop={name}")[
            "items"
        ]
        return sorted(
            items, key=lambda p: int(p["metadata"]["labels"]["reactive-loop.dev/ordinal"])
        )

    def events(self, name: str) -> list[dict[str, Any]]:
        items = self.kind.get("events", "-n", self.namespace)["items"]
        return [
            e
            for e in items
            if e.get("involvedObject", {}).get("kind") == "ReactiveLoop"
            and e["involvedObject"].get("name") == name
        ]

    def cleanup(self) -> None:
        for name in self.names:
            self.kind.kubectl(
                "delete", "reactiveloop", name, "-n", self.namespace, "--ignore-not-found",
                "--wait=true", "--timeout=60s", check=False,
            )  # fmt: skip
        self.kind.wait_for(
            lambda: not any(self.pods(n) for n in self.names),
            timeout=120,
            what="the test's node pods gone",
        )
