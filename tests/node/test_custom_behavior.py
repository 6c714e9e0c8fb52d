"""The custom behaviour of examples/custom (a leaderboard) and target injection
into a behaviour that declares `takes_target` (docs/custom-behavior.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from reactive_node.behaviors import (
    Behavior,
    Context,
    InvalidState,
    TargetTaking,
    as_injection,
    load_behavior,
    takes_target,
)
from reactive_node.core import contract
from reactive_node.core.codec import encode, make_request
from reactive_node.runtime.config import NodeConfig
from reactive_node.runtime.metrics import NodeMetrics
from reactive_node.runtime.node import Node
from reactive_node.runtime.store import MemoryStore

EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples" / "custom"
SPEC = "python:leaderboard:Leaderboard"


def load_example() -> Behavior:
    """The example class, loaded as a node loads it: by name, from PYTHONPATH."""
    sys.path.insert(0, str(EXAMPLE_DIR))
    try:
        return load_behavior(SPEC)
    finally:
        sys.path.remove(str(EXAMPLE_DIR))


BOARD = load_example()
assert isinstance(BOARD, TargetTaking)
TAKER: TargetTaking = BOARD
CTX = Context(ordinal=0, replicas=3, now=1.0, started_at=0.0)

some_claims = st.fixed_dictionaries(
    {
        "player": st.sampled_from(["ada", "bob", "cy", "dee"]),
        "score": st.integers(0, 100),
    }
)
claims = st.none() | some_claims
boards = st.fixed_dictionaries({"generation": st.integers(0, 20), "best": claims})


def test_the_example_is_a_behaviour_that_takes_a_target() -> None:
    assert BOARD.name == "leaderboard"
    assert takes_target(BOARD)
    assert not takes_target(load_behavior("converge"))  # converge's state is the target
    assert not takes_target(load_behavior("token"))


@given(boards, boards, boards)
@settings(max_examples=200, deadline=None)
def test_merging_boards_is_a_join(a: dict[str, Any], b: dict[str, Any], c: dict[str, Any]) -> None:
    # Commutative, associative, idempotent: a lost or repeated answer never harms.
    def m(x: dict[str, Any], y: dict[str, Any]) -> dict[str, Any]:
        return BOARD.respond(x, y, CTX)

    assert m(a, b) == m(b, a)
    assert m(m(a, b), c) == m(a, m(b, c))
    assert m(a, a) == a
    assert BOARD.react(a, b, CTX) == m(a, b)
    assert BOARD.validate(m(a, b)) == m(a, b)


@given(st.lists(st.tuples(st.integers(1, 50), some_claims), max_size=8))
@settings(max_examples=100, deadline=None)
def test_injections_keep_the_best_claim_and_the_newest_generation(
    injections: list[tuple[int, dict[str, Any]]],
) -> None:
    board = BOARD.initial(CTX)
    for generation, target in injections:
        injection = as_injection({"generation": generation, "target": target}, 2**53 - 1)
        once = TAKER.inject(board, injection, CTX)
        assert TAKER.inject(once, injection, CTX) == once  # idempotent
        board = once
    if injections:
        assert board["generation"] == max(g for g, _ in injections)
        best = max(injections, key=lambda x: (x[1]["score"], x[1]["player"]))[1]
        assert board["best"] == best
        assert BOARD.summary(board)["generation"] == board["generation"]
        assert BOARD.summary(board)["target"] == best
    else:
        assert board == {"generation": 0, "best": None}


@pytest.mark.parametrize(
    "raw",
    [
        None,
        {"generation": 1},
        {"generation": -1, "best": None},
        {"generation": 1, "best": {"player": "", "score": 1}},
        {"generation": 1, "best": {"player": "a", "score": 1.5}},
        {"generation": 1, "best": {"player": "a", "score": 1, "x": 0}},
        {"generation": True, "best": None},
    ],
)
def test_the_example_refuses_what_is_not_a_board(raw: Any) -> None:
    with pytest.raises(InvalidState):
        BOARD.validate(raw)


@pytest.mark.parametrize(
    "raw",
    [
        None,
        {"generation": 1},
        {"generation": "1", "target": {}},
        {"generation": 1, "target": 1, "x": 2},
    ],
)
def test_an_injection_is_exactly_generation_and_target(raw: Any) -> None:
    with pytest.raises(InvalidState):
        as_injection(raw, 2**53 - 1)


# --- in a node ---------------------------------------------------------------------


def make_node(behavior: Behavior, store: MemoryStore | None = None) -> Node:
    config = NodeConfig(loop="demo", node="demo-0", ordinal=0, peers=("127.0.0.1:1",) * 3)
    metrics = NodeMetrics(CollectorRegistry(), "demo", "demo-0", behavior.name, "ring")
    return Node(config, behavior, store or MemoryStore(), metrics)


def body(state: dict[str, Any], sender: str = contract.OPERATOR_SENDER, seq: int = 1) -> bytes:
    return encode(make_request("demo", sender, 1, seq, state))


async def test_the_operators_injection_reaches_inject_and_is_persisted() -> None:
    store = MemoryStore()
    node = make_node(BOARD, store)
    await node.start()
    claim = {"player": "ada", "score": 42}
    reply = await node.serve_roundtrip(body({"generation": 3, "target": claim}), None)
    assert reply.status == 200, reply.body
    assert reply.body["state"] == {"generation": 3, "best": claim}
    stored = json.loads((await store.load()).raw or "{}")
    assert {k: stored[k] for k in ("generation", "best")} == {"generation": 3, "best": claim}
    assert node.describe()["summary"]["generation"] == 3  # what the operator polls
    # The same injection again (a lost answer, a resync) changes nothing.
    again = await node.serve_roundtrip(body({"generation": 3, "target": claim}, seq=2), None)
    assert again.status == 200
    assert again.body["state"] == reply.body["state"]
    # A worse claim moves the generation, not the leader.
    worse = {"player": "bob", "score": 7}
    third = await node.serve_roundtrip(body({"generation": 4, "target": worse}, seq=3), None)
    assert third.body["state"] == {"generation": 4, "best": claim}


async def test_a_target_the_behaviour_refuses_is_a_400_and_changes_nothing() -> None:
    node = make_node(BOARD)
    await node.start()
    before = node.state
    reply = await node.serve_roundtrip(body({"generation": 3, "target": {"player": "x"}}), None)
    assert reply.status == 400
    assert "invalid target" in reply.body["detail"]
    not_injection = await node.serve_roundtrip(body({"generation": 3}, seq=2), None)
    assert not_injection.status == 400
    assert node.state == before


async def test_only_the_operator_injects_a_peer_sends_its_board() -> None:
    node = make_node(BOARD)
    await node.start()
    claim = {"player": "ada", "score": 1}
    peer = await node.serve_roundtrip(
        body({"generation": 2, "target": claim}, sender="demo-1"), None
    )
    assert peer.status == 400  # an injection's shape is no board
    board = await node.serve_roundtrip(body({"generation": 2, "best": claim}, "demo-1"), None)
    assert board.status == 200
    assert board.body["state"] == {"generation": 2, "best": claim}


async def test_a_behaviour_that_takes_no_target_refuses_an_injection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    node = make_node(load_behavior("python:custom_behavior_example:MaxCounter"))
    await node.start()
    reply = await node.serve_roundtrip(body({"generation": 1, "target": {"n": 5}}), None)
    assert reply.status == 400
    assert "invalid state" in reply.body["detail"]
    sys.modules.pop("custom_behavior_example", None)


async def test_converge_takes_the_injection_as_its_state_as_before() -> None:
    node = make_node(load_behavior("converge"))
    await node.start()
    reply = await node.serve_roundtrip(body({"generation": 2, "target": "any JSON"}), None)
    assert reply.status == 200
    assert reply.body["state"] == {"generation": 2, "target": "any JSON"}
