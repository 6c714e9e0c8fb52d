"""`kubectl rloop` against loops of the quickstart's operator on kind
(docs/chaos.md, "In a cluster").

Each test makes a loop in a fresh `restricted` namespace (fixture
`namespace`), then runs the plugin as a user does — the console script
`kubectl-rloop`, and once through `kubectl rloop` to show kubectl finds it —
with the kind cluster's own context:

* `status` and `history` read every node (the loop's NetworkPolicy refuses
  the API server's pod proxy here, so `auto` reads through port-forwards and
  says so);
* a short bounded `chaos --kill --partition` exits 0 with a verdict of no
  violations and faults injected, and leaves no object it made.

The partition cuts the pod (kube-network-policies enforces it): the loop's
own policy leaves out the pod the run labels, and nodes open a connection per
round trip (docs/chaos.md). No pod keeps the label after the run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from kind.kindcluster import TOOLS_BIN, Kind, condition

PLUGIN = str(Path(sys.executable).parent / "kubectl-rloop")
CHAOS_SECONDS = 40


def make_loop(kind: Kind, namespace: str, name: str, behavior: str) -> None:
    extra = (
        "token: {holdSeconds: 2, lossTimeoutSeconds: 10}\n"
        if behavior == "token"
        else 'target: {rloop: "yes"}\n'
    )
    kind.apply(
        textwrap.dedent(f"""\
            apiVersion: reactive-loop.dev/v1alpha1
            kind: ReactiveLoop
            metadata: {{name: {name}}}
            spec:
              replicas: 3
              behavior: {behavior}
              topology: ring
              loop: {{interval: 0.5, timeout: 0.25, maxBackoff: 4}}
            """)
        + textwrap.indent(extra, "  "),
        namespace,
    )


def ready(kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
    """The loop once Ready and settled: Converged (converge) or TokenHealthy (token)."""
    obj = kind.get("rloop", name, "-n", namespace)
    settled = "TokenHealthy" if obj["spec"]["behavior"] == "token" else "Converged"
    ok = condition(obj, "Ready") == "True" and condition(obj, settled) == "True"
    return obj if ok else None


def rloop(
    kind: Kind, namespace: str, *args: str, timeout: float = 120, via_kubectl: bool = False
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(PLUGIN).parent}:{TOOLS_BIN}:{env.get('PATH', '')}"
    command = [PLUGIN] if not via_kubectl else [str(TOOLS_BIN / "kubectl"), "rloop"]
    return subprocess.run(
        [*command, *args, "--context", kind.context, "-n", namespace],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def left_behind(kind: Kind, namespace: str) -> list[str]:
    items = kind.get(
        "networkpolicies", "-n", namespace, "-l", "app.kubernetes.io/managed-by=kubectl-rloop"
    )["items"]
    return [str(p["metadata"]["name"]) for p in items]


@pytest.mark.parametrize("behavior", ["converge", "token"])
def test_status_history_and_a_bounded_chaos_run(
    kind: Kind, namespace: str, behavior: str, tmp_path: Path
) -> None:
    name = f"rl-{behavior}"
    make_loop(kind, namespace, name, behavior)
    kind.wait_for(lambda: ready(kind, namespace, name), 180, what=f"{name} Ready and settled")

    table = rloop(kind, namespace, "status", name, via_kubectl=True)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith(f"loop {name} (namespace {namespace}): {behavior}/ring, 3 replicas")
    assert "read via" in lines[0]
    assert len(lines) == 2 + 3, table.stdout

    doc = json.loads(rloop(kind, namespace, "status", name, "-o", "json").stdout)
    print("status read via:", doc["via"])
    for node in doc["nodes"]:
        assert node["state"] is not None, node["error"]
        assert node["phase"] in ("looping", "waiting"), node
        assert node["via"] in ("proxy", "port-forward")

    hist = rloop(kind, namespace, "history", name, "-o", "json")
    assert hist.returncode == 0, hist.stderr
    histories = json.loads(hist.stdout)
    assert sorted(histories["nodes"]) == [f"{name}-{i}" for i in range(3)]
    assert histories["errors"] == {}
    recent = rloop(kind, namespace, "history", name, "--since", "10m")
    assert recent.returncode == 0, recent.stderr
    assert recent.stdout.startswith(f"loop {name} (namespace {namespace}):")

    out = tmp_path / "chaos"
    run = rloop(
        kind, namespace,
        "chaos", name, "--duration", f"{CHAOS_SECONDS}s", "--kill", "--partition",
        "--seed", "11", "--out", str(out),
        timeout=CHAOS_SECONDS + 400,
    )  # fmt: skip
    print(run.stderr)
    verdict = json.loads(run.stdout)
    assert run.returncode == 0, (verdict.get("violations"), verdict.get("cleanup"), run.stderr)
    assert verdict["ok"] is True
    assert verdict["violationCounts"] == {}
    assert verdict["faultCounts"]["kill"] == 1
    assert verdict["faultCounts"]["partition"] == 1
    assert sum(verdict["faultCounts"].values()) > 0
    assert verdict["behavior"] == behavior
    assert json.loads((out / "verdict.json").read_text()) == verdict
    assert "<svg" in (out / "timeline.html").read_text()
    (partition,) = verdict["partitions"]
    print("partition:", json.dumps(partition))
    killed = {n for f in verdict["faults"] if f["kind"] == "kill" for n in f["nodes"]}
    if partition["node"] in killed:
        assert partition["cut"] is not False, partition  # may be unmeasured (None)
    else:
        assert partition["cut"] is True, partition
        assert partition["loopsWhileCut"] == 0
    cleanup = verdict["cleanup"]
    assert cleanup["created"] == [partition["policy"]]
    assert cleanup["removed"] == cleanup["created"]
    assert cleanup["left"] == []
    assert left_behind(kind, namespace) == []
    assert cleanup["labelled"] == [partition["node"]] == cleanup["unlabelled"]
    labelled = kind.kubectl(
        "get", "pods", "-n", namespace, "-l", "reactive-loop.dev/partitioned", "-o", "name"
    )
    assert labelled.stdout.strip() == "", labelled.stdout
    kind.wait_for(lambda: ready(kind, namespace, name), 120, what=f"{name} Ready after chaos")
