"""The pure decision of one pass (`decide`): which actions, which events,
which status and what to remember, from what was observed — no I/O, no fakes.

The conditions it makes are properties over any observed state in
test_operator_conditions.py; the apply step is exercised with fake clients in
test_operator_suspend.py, test_operator_secret.py and test_operator_resync.py.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from reactive_node.core import contract as c
from reactive_operator import builders
from reactive_operator.builders import NodeDefaults, Owner
from reactive_operator.config import load
from reactive_operator.decide import (
    ENSURE_EVERY_SECONDS,
    INJECT_BACKOFF_MAX,
    AnnotatePod,
    Create,
    CreateNode,
    Decision,
    DeletePod,
    Event,
    Inject,
    Observed,
    Remembered,
    SecretCheck,
    Target,
    Wanted,
    after_injection,
    assumed_rbac,
    decide,
    refused_pod,
    settle,
    shared_due,
    target_of,
)
from reactive_operator.plan import PodView
from reactive_operator.spec import parse_spec, target_digest
from reactive_operator.status import NodeReport, parse_report, status_patch

OWNER = Owner("demo", "ns", "uid-demo")
DEFAULTS = NodeDefaults("reactive-loop-node:0.1.0", "IfNotPresent")
NETWORK = load({}).node_network
NOW = "2026-01-01T00:00:00Z"
UID = "uid-of-demo-hmac"
KEY = st.from_regex(r"[a-z]{1,5}", fullmatch=True)


def wanted(**raw: Any) -> Wanted:
    spec = {"replicas": 3, "target": {"v": 1}, **raw}
    return Wanted(parse_spec(spec), None, DEFAULTS, NETWORK)


def rejected(error: str = "spec.replicas: too many") -> Wanted:
    return Wanted(None, error, DEFAULTS, NETWORK)


def node_pods(w: Wanted, n: int = 3, **kw: Any) -> tuple[PodView, ...]:
    assert w.spec is not None
    digest = builders.spec_hash(w.spec, DEFAULTS)
    return tuple(
        replace(
            PodView(
                name=f"demo-{i}",
                ordinal=i,
                spec_hash=digest,
                replicas_annotation=str(w.spec.replicas),
                phase="Running",
                ready=True,
                ip=f"10.0.0.{i + 2}",
            ),
            **kw,
        )
        for i in range(n)
    )


def reports(
    pods: tuple[PodView, ...], generation: int = 0, phase: str = "looping"
) -> dict[str, NodeReport | None]:
    return {
        p.name: parse_report(
            {"node": p.name, "phase": phase, "summary": {"generation": generation}}
        )
        for p in pods
    }


def seen(w: Wanted, **kw: Any) -> Observed:
    pods = kw.pop("pods", node_pods(w) if w.spec is not None else ())
    args: dict[str, Any] = dict(
        owner=OWNER,
        generation=4,
        status={},
        pods=pods,
        reports=reports(pods, generation=4),  # every node holds the target
        remembered=Remembered(),
        now=1000.0,
        wall=NOW,
        shared_due=False,
        rbac_ordinals=frozenset(p.ordinal for p in pods),
    )
    args.update(kw)
    return Observed(**args)


def kinds(decision: Decision) -> list[str]:
    return [type(a).__name__ for a in decision.actions]


def condition(decision: Decision, kind: str) -> dict[str, Any]:
    found: dict[str, Any] = next(x for x in decision.status["conditions"] if x["type"] == kind)
    return found


def injections(decision: Decision) -> list[Inject]:
    return [a for a in decision.actions if isinstance(a, Inject)]


# --- a rejected spec -------------------------------------------------------------


def test_a_rejected_spec_changes_nothing_and_is_reported_once() -> None:
    w = rejected()
    first = decide(seen(w, shared_due=True), w)
    assert first.actions == ()
    assert first.events == (Event("Warning", "InvalidSpec", "spec.replicas: too many"),)
    assert condition(first, "Degraded")["reason"] == "InvalidSpec"
    again = decide(seen(w, remembered=first.remembered), w)
    assert again.events == ()
    other = decide(
        seen(rejected("spec.target: too big"), remembered=first.remembered),
        rejected("spec.target: too big"),
    )
    assert [e.reason for e in other.events] == ["InvalidSpec"]


# --- pure and repeatable ---------------------------------------------------------


@st.composite
def observations(draw: st.DrawFn) -> tuple[Observed, Wanted]:
    replicas = draw(st.integers(1, 5))
    raw: dict[str, Any] = {
        "replicas": replicas,
        "suspend": draw(st.booleans()),
        "auth": {"hmac": draw(st.booleans())},
    }
    if draw(st.booleans()):
        raw["target"] = {"v": draw(st.integers(0, 3))}
    spec = parse_spec(raw)
    w = Wanted(spec, None, DEFAULTS, NETWORK)
    current = builders.spec_hash(spec, DEFAULTS)
    pods: list[PodView] = []
    answers: dict[str, NodeReport | None] = {}
    for ordinal in range(replicas + 2):
        if draw(st.booleans()) and draw(st.booleans()):
            continue
        name = f"demo-{ordinal}"
        pods.append(
            PodView(
                name=name,
                ordinal=ordinal,
                spec_hash=draw(st.sampled_from(["old", current])),
                phase=draw(st.sampled_from(["Pending", "Running", "Failed"])),
                ready=draw(st.booleans()),
                deleting=draw(st.integers(0, 4)) == 0,
                ip=draw(st.sampled_from([None, f"10.0.0.{ordinal + 2}"])),
            )
        )
        phase = draw(st.sampled_from([None, "looping", "waiting", "suspended"]))
        answers[name] = (
            None
            if phase is None
            else parse_report(
                {"node": name, "phase": phase, "summary": {"generation": draw(st.integers(0, 5))}}
            )
        )
    secret = draw(
        st.sampled_from([None, SecretCheck(uid=UID), SecretCheck(("SecretNotOwned", "not ours"))])
    )
    observed = Observed(
        owner=OWNER,
        generation=draw(st.integers(1, 5)),
        status=draw(
            st.sampled_from([{}, {"targetGeneration": 2, "targetDigest": target_digest({"v": 1})}])
        ),
        pods=tuple(pods),
        reports=answers,
        remembered=Remembered(
            next_injection=draw(st.sampled_from([0.0, 5000.0])),
            pod_rejected=draw(st.sampled_from([None, "pod demo-0 refused: bad"])),
        ),
        now=1000.0,
        wall=NOW,
        shared_due=draw(st.booleans()),
        rbac_ordinals=frozenset(draw(st.sets(st.integers(0, replicas + 1)))),
        rbac_listed=draw(st.booleans()),
        secret=secret,
    )
    return observed, w


@settings(max_examples=150, deadline=None)
@given(observations())
def test_deciding_is_pure_and_repeatable(case: tuple[Observed, Wanted]) -> None:
    observed, w = case
    before = copy.deepcopy(observed)
    first = decide(observed, w)
    assert observed == before  # nothing observed is changed
    assert decide(observed, w) == first


@settings(max_examples=150, deadline=None)
@given(observations())
def test_no_node_is_touched_while_the_secret_is_unusable(case: tuple[Observed, Wanted]) -> None:
    observed, w = case
    assert w.spec is not None
    decision = decide(observed, w)
    problem = observed.secret is not None and observed.secret.problem is not None
    if w.spec.auth.hmac and problem:
        assert not {"CreateNode", "DeletePod", "DeleteNodeRbac", "AnnotatePod", "Inject"} & set(
            kinds(decision)
        )
        ready = condition(decision, "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "SecretNotOwned")
    for inject in injections(decision):
        assert not w.spec.suspend  # a suspended loop's target waits
        assert not (w.spec.auth.hmac and problem)
        assert inject.pod in {p.name for p in observed.pods}


@settings(max_examples=150, deadline=None)
@given(observations())
def test_a_suspended_loop_only_marks_its_pods(case: tuple[Observed, Wanted]) -> None:
    observed, w = case
    assert w.spec is not None
    if not w.spec.suspend:
        return
    for action in decide(observed, w).actions:
        if isinstance(action, AnnotatePod):
            assert set(action.annotations) == {c.SUSPENDED_ANNOTATION}
        else:
            assert isinstance(action, Create)  # only the shared children


# --- the target ------------------------------------------------------------------


@given(
    target=st.dictionaries(KEY, st.integers(0, 9), min_size=1, max_size=4),
    other=st.dictionaries(KEY, st.integers(0, 9), min_size=1, max_size=4),
    previous=st.integers(1, 100),
    generation=st.integers(1, 200),
)
def test_the_target_keeps_its_number_until_its_content_changes(
    target: dict[str, int], other: dict[str, int], previous: int, generation: int
) -> None:
    spec = parse_spec({"target": target})
    kept = {"targetGeneration": previous, "targetDigest": target_digest(target)}
    assert target_of(spec, kept, generation) == target_of(spec, kept, generation + 7)
    chosen = target_of(spec, kept, generation)
    assert chosen is not None
    assert chosen.generation == previous
    moved = {"targetGeneration": previous, "targetDigest": target_digest(other)}
    fresh = target_of(spec, moved, generation)
    assert fresh is not None
    assert fresh.generation == (previous if target == other else generation)
    assert target_of(spec, {}, generation) == Target(generation, target_digest(target))
    assert target_of(parse_spec({"behavior": "token"}), kept, generation) is None


def test_a_target_no_node_holds_is_injected_looping_nodes_first() -> None:
    w = wanted()
    pods = node_pods(w)
    answers = reports(pods, generation=0)
    answers["demo-0"] = parse_report({"node": "demo-0", "phase": "waiting"})
    decision = decide(seen(w, pods=pods, reports=answers), w)
    (inject,) = injections(decision)
    assert inject == Inject(4, builders.injection_text(4, {"v": 1}), "demo-1")
    assert "injectedGeneration" not in decision.status  # not before a node reports it
    # Each attempt goes to the next candidate: looping nodes first, then by ordinal.
    tried = []
    mem = Remembered()
    for _ in range(4):
        (attempt,) = injections(decide(seen(w, pods=pods, reports=answers, remembered=mem), w))
        tried.append(attempt.pod)
        mem = replace(after_injection(mem, 0.0), next_injection=0.0)
    assert tried == ["demo-1", "demo-2", "demo-0", "demo-1"]
    took = decide(seen(w, pods=pods, reports=reports(pods, generation=4), remembered=mem), w)
    assert took.status["injectedGeneration"] == 4  # a node reports holding it
    assert (took.remembered.inject_attempts, took.remembered.inject_backoff) == (0, 1.0)
    assert settle(seen(w, pods=pods, reports=answers), w, mem).get("injectedGeneration") is None


def test_a_target_some_node_holds_is_not_injected_again() -> None:
    w = wanted()
    pods = node_pods(w)
    decision = decide(seen(w, pods=pods, reports=reports(pods, generation=4)), w)
    assert injections(decision) == []
    assert decision.status["injectedGeneration"] == 4
    assert decision.status["summary"] == "target 4: 3/3 nodes"


def test_no_injection_while_backing_off_or_while_the_secret_is_not_the_loops() -> None:
    w = wanted()
    pods = node_pods(w)
    behind = reports(pods, generation=0)  # no node holds target 4

    def injected(w: Wanted, **kw: Any) -> list[Inject]:
        return injections(decide(seen(w, pods=pods, reports=behind, **kw), w))

    assert len(injected(w)) == 1
    assert injected(w, remembered=Remembered(next_injection=1500.0)) == []
    assert len(injected(w, remembered=Remembered(next_injection=1000.0))) == 1
    assert injected(wanted(suspend=True)) == []
    signed = wanted(auth={"hmac": True})
    assert len(injected(signed)) == 1  # nodes read the keys; the operator signs nothing
    bad = SecretCheck(("SecretNotOwned", "Secret demo-hmac is not this loop's"))
    assert injected(signed, secret=bad) == []
    assert injected(signed, remembered=Remembered(secret_problem=bad.problem)) == []
    assert len(injected(signed, secret=SecretCheck(uid=UID))) == 1


def test_the_injection_backoff_doubles_up_to_its_cap_and_resets_once_a_node_holds_it() -> None:
    mem = Remembered()
    waits = []
    for _ in range(8):
        mem = after_injection(mem, 100.0)
        waits.append(mem.next_injection - 100.0)
    assert waits == [1, 2, 4, 8, 16, 30, 30, 30]
    assert mem.inject_backoff == INJECT_BACKOFF_MAX
    assert mem.inject_attempts == 8
    w = wanted()
    pods = node_pods(w)
    reset = decide(seen(w, pods=pods, reports=reports(pods, generation=4), remembered=mem), w)
    assert (reset.remembered.inject_backoff, reset.remembered.next_injection) == (1.0, 0.0)
    assert reset.remembered.inject_attempts == 0


# --- children, pods and memory ---------------------------------------------------


def test_shared_children_are_checked_on_every_change_and_once_a_minute() -> None:
    mem = Remembered(ensured_at=1000.0, ensured_for=(OWNER.uid, 4))
    assert not shared_due(mem, OWNER, 4, 1000.0 + ENSURE_EVERY_SECONDS - 1)
    assert shared_due(mem, OWNER, 4, 1000.0 + ENSURE_EVERY_SECONDS)
    assert shared_due(mem, OWNER, 5, 1001.0)  # the resource changed
    assert shared_due(Remembered(), OWNER, 4, 0.0)
    w = wanted()
    decision = decide(seen(w, shared_due=True), w)
    created = [a.manifest["kind"] for a in decision.actions if isinstance(a, Create)]
    assert created == ["Service", "NetworkPolicy", "PodDisruptionBudget"]
    assert decision.remembered.ensured_for == (OWNER.uid, 4)
    assert decision.remembered.ensured_at == 1000.0
    assert not [a for a in decide(seen(w), w).actions if isinstance(a, Create)]


def test_a_secret_problem_is_checked_again_and_reported_once() -> None:
    w = wanted(auth={"hmac": True})
    bad = SecretCheck(("SecretNotOwned", "Secret demo-hmac is not this loop's"))
    first = decide(seen(w, shared_due=True, secret=bad), w)
    assert first.remembered.ensured_for is None  # checked again on the next pass
    assert [e.reason for e in first.events] == ["SecretNotOwned"]
    again = decide(seen(w, shared_due=True, secret=bad, remembered=first.remembered), w)
    assert again.events == ()
    made = decide(seen(w, shared_due=True, secret=SecretCheck(created=True, uid=UID)), w)
    assert [e.message for e in made.events] == ["created HMAC Secret demo-hmac"]
    assert made.remembered.hmac_secret_uid == UID
    assert made.status[builders.HMAC_SECRET_UID_FIELD] == UID


def test_the_secrets_uid_outlives_switching_auth_off() -> None:
    w = wanted()  # no HMAC
    recorded = {builders.HMAC_SECRET_UID_FIELD: UID}
    decision = decide(seen(w, status=recorded), w)
    assert decision.status[builders.HMAC_SECRET_UID_FIELD] == UID
    assert builders.HMAC_SECRET_UID_FIELD not in status_patch(recorded, decision.status)


def test_missing_nodes_are_created_with_their_rbac_first() -> None:
    w = wanted()
    pods = node_pods(w, 1)
    decision = decide(seen(w, pods=pods, rbac_ordinals=frozenset({0, 1}), rbac_listed=True), w)
    nodes = [a for a in decision.actions if isinstance(a, CreateNode)]
    assert [(n.ordinal, len(n.rbac), n.pod is not None) for n in nodes] == [
        (1, 0, True),
        (2, 3, True),
    ]
    assert nodes[1].event == Event("Normal", "CreatedPod", "created pod demo-2")
    assert decision.remembered.rbac_clean_for is None  # not clean: listed again
    assert decision.plan is not None
    assert decision.plan.create_pods == (1, 2)


def test_rbac_seen_to_match_is_not_listed_again() -> None:
    w = wanted()
    pods = node_pods(w)
    decision = decide(seen(w, pods=pods, rbac_listed=True), w)
    assert decision.actions == ()
    assert decision.remembered.rbac_clean_for == (3, (0, 1, 2))
    assert assumed_rbac(decision.remembered, 3, pods) == frozenset({0, 1, 2})
    assert assumed_rbac(decision.remembered, 4, pods) is None  # scaled: list again
    assert assumed_rbac(decision.remembered, 3, pods[:2]) is None


def test_an_outdated_pod_is_rolled_when_every_node_is_ready() -> None:
    w = wanted()
    pods = (*node_pods(w, 2), *node_pods(w, 3, spec_hash="old")[2:])
    decision = decide(seen(w, pods=pods), w)
    assert decision.actions == (
        DeletePod(
            "demo-2", Event("Normal", "RollingPod", "rolling pod demo-2: its template changed")
        ),
    )


def test_node_state_errors_are_reported_once_each() -> None:
    w = wanted()
    pods = node_pods(w)
    answers = reports(pods)
    answers["demo-1"] = parse_report({"node": "demo-1", "stateError": "not JSON"})
    first = decide(seen(w, pods=pods, reports=answers), w)
    assert [e.message for e in first.events] == ["demo-1: not JSON"]
    assert decide(seen(w, pods=pods, reports=answers, remembered=first.remembered), w).events == ()


def test_a_refused_pod_is_remembered_and_reported_once() -> None:
    mem, event = refused_pod(Remembered(), "demo-2", "spec.containers[1].image: Required value")
    assert event is not None
    assert event.reason == "PodRejected"
    assert refused_pod(mem, "demo-2", "spec.containers[1].image: Required value")[1] is None
    w = wanted()
    pods = node_pods(w, 2)
    status = settle(seen(w, pods=pods), w, mem)
    degraded = next(x for x in status["conditions"] if x["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "PodRejected")
    # Nothing left to create: nothing refused any more.
    healed = decide(seen(w, remembered=mem), w)
    assert healed.remembered.pod_rejected is None


def test_events_are_bounded() -> None:
    assert len(Event("Warning", "X", "m" * 5000).message) == 1000
