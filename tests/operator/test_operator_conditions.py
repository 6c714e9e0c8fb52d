"""The status never claims more than is true: conditions as properties over any
observed state (pods, node reports, a rejected spec, a refusal, suspend), as
the pure decision (`decide.decide`) makes them."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from reactive_operator.builders import NodeDefaults, Owner
from reactive_operator.config import load
from reactive_operator.decide import Observed, Remembered, SecretCheck, Wanted, decide
from reactive_operator.plan import PodView
from reactive_operator.spec import parse_spec, target_digest
from reactive_operator.status import NodeReport, parse_report

NOW = "2026-01-01T00:00:00Z"
DEFAULTS = NodeDefaults("reactive-loop-node:0.1.0", "IfNotPresent")
NETWORK = load({}).node_network
TARGET = {"v": 1}
TYPES_CONVERGE = {"Ready", "Converged", "Degraded", "Suspended"}


@st.composite
def observed(draw: st.DrawFn) -> dict[str, Any]:
    replicas = draw(st.integers(min_value=1, max_value=6))
    pods: list[PodView] = []
    reports: dict[str, NodeReport | None] = {}
    for ordinal in range(replicas + 2):  # some missing, some surplus
        if not draw(st.booleans()) and ordinal < replicas and draw(st.booleans()):
            continue
        if ordinal >= replicas and draw(st.booleans()):
            continue
        name = f"d-{ordinal}"
        pods.append(
            PodView(
                name=name,
                ordinal=ordinal,
                phase=draw(st.sampled_from(["Pending", "Running", "Failed"])),
                ready=draw(st.booleans()),
                deleting=draw(st.integers(min_value=0, max_value=4)) == 0,
                ip=draw(st.sampled_from([None, f"10.0.0.{ordinal + 2}"])),
            )
        )
        phase = draw(st.sampled_from([None, "looping", "waiting", "starting", "suspended"]))
        reports[name] = (
            None
            if phase is None
            else parse_report(
                {"node": name, "phase": phase, "summary": {"generation": draw(st.integers(0, 3))}}
            )
        )
    return {
        "replicas": replicas,
        "pods": pods,
        "reports": reports,
        "spec_error": draw(st.sampled_from([None, None, "spec.replicas: too many"])),
        "refusal": draw(st.sampled_from([None, None, ("SecretNotOwned", "not ours")])),
        "suspend": draw(st.booleans()),
        "target_generation": draw(st.sampled_from([None, 1, 2])),
    }


def status_of(seen: dict[str, Any]) -> dict[str, Any]:
    """The status `decide` makes of this observation (a refusal is the loop's
    HMAC Secret found unusable; a target generation one the status recorded)."""
    error = seen["spec_error"]
    spec = None
    raw: dict[str, Any] = {"replicas": seen["replicas"], "suspend": seen["suspend"]}
    status: dict[str, Any] = {}
    if seen["target_generation"] is not None:
        raw["target"] = TARGET
        status = {
            "targetGeneration": seen["target_generation"],
            "targetDigest": target_digest(TARGET),
        }
    if seen["refusal"] is not None:
        raw["auth"] = {"hmac": True}
    if not error:
        spec = parse_spec(raw)
    observed = Observed(
        owner=Owner("d", "ns", "uid-d"),
        generation=3,
        status=status,
        pods=tuple(seen["pods"]),
        reports=seen["reports"],
        remembered=Remembered(),
        now=100.0,
        wall=NOW,
        shared_due=True,
        rbac_ordinals=frozenset(range(seen["replicas"])),
        secret=None if seen["refusal"] is None else SecretCheck(seen["refusal"]),
    )
    return decide(observed, Wanted(spec, error, DEFAULTS, NETWORK)).status


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = {c["type"]: c for c in status["conditions"]}
    assert len(found) == len(status["conditions"]), "a condition type twice"
    return found


def ready_members(seen: dict[str, Any]) -> int:
    return sum(
        1 for p in seen["pods"] if p.ordinal < seen["replicas"] and p.ready and not p.deleting
    )


@given(observed())
def test_ready_is_true_exactly_when_the_operator_runs_the_spec_and_every_node_is_ready(
    seen: dict[str, Any],
) -> None:
    ready = conditions(status_of(seen))["Ready"]
    runs = seen["spec_error"] is None and seen["refusal"] is None
    all_ready = ready_members(seen) == seen["replicas"]
    assert (ready["status"] == "True") == (runs and all_ready), (ready, seen)


@given(observed())
def test_ready_never_true_with_fewer_ready_nodes_than_replicas(seen: dict[str, Any]) -> None:
    status = status_of(seen)
    if conditions(status)["Ready"]["status"] == "True":
        assert status["readyReplicas"] >= seen["replicas"]
        assert seen["spec_error"] is None


@given(observed())
def test_a_rejected_spec_is_degraded_never_ready_and_suspension_unknown(
    seen: dict[str, Any],
) -> None:
    found = conditions(status_of(seen))
    if seen["spec_error"] is not None:
        assert (found["Degraded"]["status"], found["Degraded"]["reason"]) == ("True", "InvalidSpec")
        assert (found["Ready"]["status"], found["Ready"]["reason"]) == ("False", "InvalidSpec")
        assert found["Suspended"]["status"] == "Unknown"
    elif seen["refusal"] is not None:
        assert (found["Degraded"]["status"], found["Degraded"]["reason"]) == (
            "True",
            "SecretNotOwned",
        )
        assert found["Ready"]["status"] == "False"


@given(observed())
def test_suspended_says_what_the_spec_says(seen: dict[str, Any]) -> None:
    status = status_of(seen)
    found = conditions(status)
    if seen["spec_error"] is None:
        assert set(found) == TYPES_CONVERGE
        assert (found["Suspended"]["status"] == "True") == seen["suspend"]
        assert status["summary"].startswith("suspended; ") == seen["suspend"]
    for cond in found.values():
        assert cond["status"] in ("True", "False", "Unknown")
        assert cond["reason"]
        assert cond["message"]


@given(observed())
def test_counts_never_exceed_the_members(seen: dict[str, Any]) -> None:
    status = status_of(seen)
    if seen["spec_error"] is None:
        members = [p for p in seen["pods"] if not p.deleting and p.ordinal < seen["replicas"]]
        assert status["readyReplicas"] <= seen["replicas"]
        assert 0 <= status["looping"] + status["waiting"] <= len(members)
        resting = sum(
            1
            for p in members
            if (r := seen["reports"].get(p.name)) is not None and r.phase == "suspended"
        )
        assert status["looping"] + status["waiting"] + resting == len(members)
