"""`spec.suspend` and the loop's PodDisruptionBudget on real containers (issue 12 §2).

Suspend: the nodes stop starting round trips (they still answer), the
operator stops changing pods (a change that would roll them waits), status
says Suspended, and resuming continues where the loop stopped: the same
target generation, then the roll that waited.

Disruption budget: `kubectl drain` evicts pods through the Eviction API, which
asks the PodDisruptionBudget; draining a shared kind node would move every
other test's pods too, so the test sends the evictions a drain would send,
two ring members in a row. The first is allowed, the second is refused with
429 until the operator's replacement is Ready again.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from kind.e2e import Loops
from kind.kindcluster import Kind
from kind.test_operator_e2e import loop, looping_converged, pod_ready, uids


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond["type"] == kind:
            return dict(cond)
    return None


def test_suspend_stops_round_trips_and_pod_changes_and_resume_continues(
    kind: Kind, loops: Loops
) -> None:
    name = loops.apply(loop("pause", 3, target={"step": 1}))
    converged = kind.wait_for(
        lambda: looping_converged(loops, name, 3), timeout=180, what="3 nodes converged"
    )
    generation = converged["status"]["convergedGeneration"]
    before = uids(loops, name)

    loops.patch(name, {"suspend": True})

    def suspended() -> dict[str, Any] | None:
        obj = loops.get(name)
        status = obj.get("status") or {}
        cond = condition(obj, "Suspended")
        annotations = [p["metadata"]["annotations"] for p in loops.pods(name)]
        if (
            cond is not None
            and cond["status"] == "True"
            and status.get("looping") == 0
            and status.get("waiting") == 0
            and all(a.get("reactive-loop.dev/suspended") == "true" for a in annotations)
        ):
            return obj
        return None

    obj = kind.wait_for(suspended, timeout=120, what="Suspended, no node looping or waiting")
    assert "suspended" in obj["status"]["summary"], obj["status"]
    table = kind.kubectl("get", "rloop", name, "-n", loops.namespace).stdout
    assert "suspended" in table, table

    # A timing change rolls every pod of a running loop; suspended, none is touched.
    changed = loops.patch(name, {"loop": {"interval": 0.8, "timeout": 0.4}})
    kind.wait_for(
        lambda: loops.get(name)["status"].get("observedGeneration") == changed,
        timeout=60,
        what="the operator has seen the change",
    )
    pods = loops.pods(name)
    assert uids(loops, name) == before, "a suspended loop's pods were changed"
    assert all(pod_ready(p) for p in pods)

    # Resume: the loop goes on with the generation it held, and the roll that waited happens.
    loops.patch(name, {"suspend": False})

    def resumed() -> Any:
        obj = looping_converged(loops, name, 3, generation)
        now = uids(loops, name)
        rolled = len(now) == 3 and not set(now.values()) & set(before.values())
        cond = condition(obj, "Suspended") if obj else None
        return obj if rolled and cond is not None and cond["status"] == "False" else None

    obj = kind.wait_for(resumed, timeout=300, what="resumed: rolled, looping, same generation")
    assert obj["status"]["convergedGeneration"] == generation
    env = loops.pods(name)[0]["spec"]["containers"][0]["env"]
    assert {"name": "RL_INTERVAL", "value": "0.8"} in env


def evict(kind: Kind, namespace: str, pod: str) -> subprocess.CompletedProcess[str]:
    """POST an Eviction for `pod`, as `kubectl drain` does."""
    eviction = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": pod, "namespace": namespace},
    }
    return kind.kubectl(
        "create", "--raw", f"/api/v1/namespaces/{namespace}/pods/{pod}/eviction", "-f", "-",
        input=json.dumps(eviction), check=False,
    )  # fmt: skip


def test_the_disruption_budget_lets_a_drain_take_one_ring_member_at_a_time(
    kind: Kind, loops: Loops
) -> None:
    name = loops.apply(loop("drained", 3, target={"d": 1}))
    kind.wait_for(lambda: looping_converged(loops, name, 3), timeout=180, what="3 nodes converged")
    pdb_name = name  # the PDB is named like the loop

    def budget_allows_one() -> dict[str, Any] | None:
        pdb = kind.find("poddisruptionbudget", pdb_name, loops.namespace)
        if pdb is None:
            return None
        status = pdb.get("status") or {}
        ok = status.get("currentHealthy") == 3 and status.get("disruptionsAllowed") == 1
        return pdb if ok else None

    pdb = kind.wait_for(budget_allows_one, timeout=120, what="the PDB allows one disruption")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["metadata"]["ownerReferences"][0]["kind"] == "ReactiveLoop"

    first, second = (f"{name}-0", f"{name}-1")
    old = uids(loops, name)
    allowed = evict(kind, loops.namespace, first)
    assert allowed.returncode == 0, allowed.stderr
    refused = evict(kind, loops.namespace, second)
    assert refused.returncode != 0, "a second ring member was evicted while one is down"
    assert "disruption budget" in refused.stderr, refused.stderr

    # The operator replaces the evicted node; then a drain may take the next one.
    def replaced() -> bool:
        pods = {p["metadata"]["name"]: p for p in loops.pods(name)}
        pod = pods.get(first)
        return (
            pod is not None
            and pod["metadata"]["uid"] != old[first]
            and pod_ready(pod)
            and budget_allows_one() is not None
        )

    kind.wait_for(replaced, timeout=180, what=f"{first} replaced, Ready, budget back to 1")
    again = evict(kind, loops.namespace, second)
    assert again.returncode == 0, again.stderr
    kind.wait_for(lambda: looping_converged(loops, name, 3), timeout=180, what="converged again")

    # Turned off in the spec, the budget goes away.
    loops.patch(name, {"disruptionBudget": {"enabled": False}})
    kind.wait_for(
        lambda: kind.find("poddisruptionbudget", pdb_name, loops.namespace) is None,
        timeout=60,
        what="the PDB removed",
    )
