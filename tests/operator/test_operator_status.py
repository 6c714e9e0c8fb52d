"""Status aggregation and conditions from node reports (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from reactive_operator.plan import PodView
from reactive_operator.spec import parse_spec
from reactive_operator.status import (
    MAX_NODES_IN_STATUS,
    NodeReport,
    aggregate,
    parse_report,
    status_patch,
)

NOW = "2026-01-01T00:00:00Z"


def pods(n: int, ready: bool = True) -> list[PodView]:
    return [
        PodView(name=f"d-{i}", ordinal=i, phase="Running", ready=ready, ip=f"10.0.0.{i + 2}")
        for i in range(n)
    ]


def report(name: str, **kw: Any) -> NodeReport:
    summary = kw.pop("summary", {})
    out = parse_report({"node": name, "phase": "looping", "summary": summary, **kw})
    assert out is not None
    return out


def cond(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == kind)


def run(
    raw: dict[str, Any], ps: list[PodView], reports: Mapping[str, NodeReport | None], **kw: Any
) -> dict[str, Any]:
    args: dict[str, Any] = dict(
        name="d",
        generation=4,
        spec=parse_spec(raw),
        spec_error=None,
        pods=ps,
        reports=reports,
        target_generation=None,
        target_digest=None,
        injected_generation=None,
        previous_conditions=[],
        now=NOW,
    )
    args.update(kw)
    return aggregate(**args)


def test_converged_when_every_node_holds_the_target_generation() -> None:
    ps = pods(3)
    reps = {p.name: report(p.name, summary={"generation": 4, "target": {"x": 1}}) for p in ps}
    st_ = run({"target": {"x": 1}}, ps, reps, target_generation=4)
    assert st_["looping"] == 3
    assert st_["waiting"] == 0
    assert st_["readyReplicas"] == 3
    assert st_["convergedGeneration"] == 4
    assert cond(st_, "Converged")["status"] == "True"
    assert cond(st_, "Ready")["status"] == "True"
    assert cond(st_, "Degraded")["status"] == "False"
    assert all(c["observedGeneration"] == 4 for c in st_["conditions"])


def test_not_converged_while_one_node_lags() -> None:
    ps = pods(3)
    reps = {p.name: report(p.name, summary={"generation": 4}) for p in ps}
    reps["d-2"] = report("d-2", phase="waiting", summary={"generation": 2})
    st_ = run({"target": {"x": 1}}, ps, reps, target_generation=4)
    assert cond(st_, "Converged")["status"] == "False"
    assert "2/3" in cond(st_, "Converged")["message"]
    assert st_["convergedGeneration"] == 2
    assert st_["waiting"] == 1


def test_unreachable_ready_node_degrades() -> None:
    ps = pods(2)
    st_ = run({"replicas": 2}, ps, {"d-0": report("d-0"), "d-1": None})
    degraded = cond(st_, "Degraded")
    assert degraded["status"] == "True"
    assert degraded["reason"] == "NodesUnreachable"
    assert st_["nodes"] == ["d-1: unreachable: the operator cannot ask it"]


def test_state_error_degrades_with_the_node_named() -> None:
    ps = pods(2)
    reps = {"d-0": report("d-0"), "d-1": report("d-1", stateError="not JSON")}
    st_ = run({}, ps, reps)
    degraded = cond(st_, "Degraded")
    assert degraded["reason"] == "InvalidNodeState"
    assert "d-1: not JSON" in degraded["message"]


def test_invalid_spec_condition() -> None:
    st_ = run({}, pods(1), {}, spec=None, spec_error="loop.timeout must be smaller")
    assert cond(st_, "Degraded")["reason"] == "InvalidSpec"
    assert st_["summary"] == "invalid spec"


def test_token_holder_is_the_newest_epoch() -> None:
    ps = pods(3)
    reps = {
        "d-0": report("d-0", summary={"holding": False, "epoch": [3, 2]}),
        "d-1": report("d-1", summary={"holding": True, "epoch": [4, 0]}),
        "d-2": report("d-2", summary={"holding": False, "epoch": [4, 0]}),
    }
    st_ = run({"behavior": "token"}, ps, reps)
    assert st_["token"] == {"holders": 1, "holder": "d-1", "term": 4, "ordinal": 0}
    assert cond(st_, "TokenHealthy")["status"] == "True"
    reps["d-0"] = report("d-0", summary={"holding": False})
    reps["d-1"] = report("d-1", summary={"holding": False})
    lost = run({"behavior": "token"}, ps, reps)
    assert cond(lost, "TokenHealthy")["reason"] == "TokenLost"
    assert lost["summary"] == "no holder"


def test_a_holder_gathering_its_lease_is_not_a_lost_token() -> None:
    """The token changed hands and its new holder does not act yet (its lease
    needs a majority's round trips): the status says so, never 'no holder'."""
    ps = pods(3)
    reps = {
        "d-0": report("d-0", summary={"holding": False, "held": False, "epoch": [7, 1]}),
        "d-1": report("d-1", summary={"holding": False, "held": True, "epoch": [7, 1]}),
        "d-2": report("d-2", summary={"holding": False, "held": False, "epoch": [6, 0]}),
    }
    st_ = run({"behavior": "token"}, ps, reps)
    assert st_["summary"] == "d-1 has epoch 7.1, lease pending"
    assert st_["token"] == {"holders": 0}
    healthy = cond(st_, "TokenHealthy")
    assert (healthy["status"], healthy["reason"]) == ("True", "LeasePending")
    # Once it acts, it is the holder.
    reps["d-1"] = report("d-1", summary={"holding": True, "held": True, "epoch": [7, 1]})
    acting = run({"behavior": "token"}, ps, reps)
    assert acting["summary"] == "d-1 holds epoch 7.1"
    assert cond(acting, "TokenHealthy")["reason"] == "OneHolder"


def test_transition_time_moves_only_on_change() -> None:
    ps = pods(1)
    first = run({"replicas": 1}, ps, {"d-0": report("d-0")}, now="2026-01-01T00:00:00Z")
    again = run(
        {"replicas": 1},
        ps,
        {"d-0": report("d-0")},
        now="2026-01-01T00:05:00Z",
        previous_conditions=first["conditions"],
    )
    assert cond(again, "Ready")["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    flipped = run(
        {"replicas": 1},
        pods(1, ready=False),
        {"d-0": report("d-0")},
        now="2026-01-01T00:06:00Z",
        previous_conditions=again["conditions"],
    )
    assert cond(flipped, "Ready")["lastTransitionTime"] == "2026-01-01T00:06:00Z"


def test_status_patch_is_empty_when_nothing_changed() -> None:
    ps = pods(2)
    reps = {p.name: report(p.name) for p in ps}
    first = run({}, ps, reps)
    second = run({}, ps, reps, now="2026-01-01T01:00:00Z", previous_conditions=first["conditions"])
    assert status_patch(first, second) == {}
    assert status_patch({**first, "token": {"holders": 1}}, second) == {"token": None}


def test_bad_report_is_ignored() -> None:
    assert parse_report({"phase": "looping"}) is None  # no node name
    assert parse_report({"node": "x", "loops": "many"}) is None


@given(
    n=st.integers(min_value=1, max_value=100),
    phases=st.lists(
        st.sampled_from(["looping", "waiting", "starting", None]), min_size=100, max_size=100
    ),
)
def test_counts_add_up_and_only_nodes_needing_attention_are_listed(
    n: int, phases: list[str | None]
) -> None:
    ps = pods(n)
    reps = {
        p.name: (report(p.name, phase=phases[p.ordinal]) if phases[p.ordinal] else None) for p in ps
    }
    st_ = run({"replicas": n}, ps, reps)
    assert st_["looping"] + st_["waiting"] == n
    assert st_["looping"] == sum(1 for p in ps if phases[p.ordinal] == "looping")
    unwell = [p.name for p in ps if phases[p.ordinal] != "looping"]
    listed = st_.get("nodes", [])
    assert [line.split(":")[0] for line in listed] == unwell[:MAX_NODES_IN_STATUS]
    assert st_.get("nodesNotListed", 0) == max(0, len(unwell) - MAX_NODES_IN_STATUS)


def test_each_listed_node_says_what_needs_attention() -> None:
    ps = pods(6)
    ps[1] = PodView(name="d-1", ordinal=1, phase="Pending", ready=False)
    del ps[5]  # no pod for ordinal 5
    reps: dict[str, NodeReport | None] = {
        p.name: report(p.name, summary={"generation": 4}) for p in ps
    }
    reps["d-1"] = None
    reps["d-2"] = report(
        "d-2", phase="waiting", lastWaitReason="timeout", summary={"generation": 4}
    )
    reps["d-3"] = report("d-3", stateError="not JSON", summary={"generation": 4})
    reps["d-4"] = report("d-4", summary={"generation": 3})
    st_ = run({"replicas": 6, "target": {"x": 1}}, ps, reps, target_generation=4)
    assert st_["nodes"] == [
        "d-1: pod Pending, not ready; no pod IP yet",
        "d-2: waiting (timeout)",
        "d-3: invalid state: not JSON",
        "d-4: behind target 4 (holds 3)",
        "d-5: no pod",
    ]
    assert "nodesNotListed" not in st_


def test_a_suspended_node_of_a_suspended_loop_is_fine() -> None:
    ps = pods(2)
    reps = {p.name: report(p.name, phase="suspended") for p in ps}
    assert "nodes" not in run({"replicas": 2, "suspend": True}, ps, reps)
    assert run({"replicas": 2}, ps, reps)["nodes"] == ["d-0: suspended", "d-1: suspended"]


def test_a_round_trip_alone_changes_nothing_in_the_status() -> None:
    """Nothing in the status moves with each round trip: a steady loop costs no write."""
    ps = pods(2)
    before = run({"replicas": 2}, ps, {p.name: report(p.name, loops=5, waits=1) for p in ps})
    after = run(
        {"replicas": 2},
        ps,
        {p.name: report(p.name, loops=9, waits=2) for p in ps},
        previous_conditions=before["conditions"],
    )
    assert status_patch(before, after) == {}
    flipped = run(
        {"replicas": 2},
        ps,
        {"d-0": report("d-0", loops=9), "d-1": report("d-1", phase="waiting", loops=9)},
        previous_conditions=before["conditions"],
    )
    assert status_patch(before, flipped)["nodes"] == ["d-1: waiting"]
    # Healed again: the list goes away (a merge patch removes it with None).
    assert status_patch(flipped, after)["nodes"] is None


INT64 = 2**63 - 1
any_int = st.integers(min_value=-(2**70), max_value=2**70)


def _ints(value: Any) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, Mapping):
        return [i for v in value.values() for i in _ints(v)]
    if isinstance(value, list):
        return [i for v in value for i in _ints(v)]
    return []


@given(
    generation=any_int,
    term=any_int,
    loops=any_int,
    waits=any_int,
    state_error=st.one_of(st.none(), st.text(max_size=700)),
)
def test_no_node_report_makes_the_status_unwritable(
    generation: int, term: int, loops: int, waits: int, state_error: str | None
) -> None:
    """Every integer of the status fits int64, whatever numbers a node reports;
    a report with numbers out of the node's bounds counts as no report."""
    raw = {
        "node": "d-0",
        "phase": "looping",
        "loops": loops,
        "waits": waits,
        "stateError": state_error,
        "summary": {"generation": generation, "holding": True, "epoch": [term, 0]},
    }
    parsed = parse_report(raw)
    in_bounds = 0 <= generation <= 2**53 - 1 and 0 <= term <= 2**53 - 1
    in_bounds = in_bounds and 0 <= loops <= INT64 and 0 <= waits <= INT64
    assert (parsed is not None) == in_bounds
    for spec in ({"target": {"v": 1}}, {"behavior": "token", "topology": "ring"}):
        status = run(spec, pods(1), {"d-0": parsed}, target_generation=5)
        assert all(-(2**63) <= i <= INT64 for i in _ints(status))
        if parsed is None:
            assert cond(status, "Degraded")["reason"] == "NodesUnreachable"
        elif state_error:
            degraded = cond(status, "Degraded")
            assert degraded["reason"] == "InvalidNodeState"
            assert len(degraded["message"]) <= 512


def test_a_bad_answer_is_the_nodes_problem_not_unreachable() -> None:
    ps = pods(3)
    reports = {"d-0": report("d-0"), "d-1": None, "d-2": None}
    why = "/v1/state answered not a state document: Expected `int` >= 0 - at `$.loops`"
    status = run({"replicas": 3}, ps, reports, bad_answers={"d-1": why})
    assert status["nodes"] == [
        f"d-1: bad answer: {why}",
        "d-2: unreachable: the operator cannot ask it",
    ]
    assert status["looping"] == 1
