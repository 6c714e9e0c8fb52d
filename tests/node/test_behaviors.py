"""Behaviours, topology and backoff as pure functions (no I/O)."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from reactive_node.behaviors import (
    BehaviorLoadError,
    Context,
    Converge,
    InvalidState,
    Settings,
    Token,
    load_behavior,
    peer_hint,
)
from reactive_node.core.backoff import Backoff
from reactive_node.core.behaviors.converge import merge
from reactive_node.core.topology import PeerPicker

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)
converge_states = st.fixed_dictionaries({"generation": st.integers(0, 5), "target": json_values})


def ctx(ordinal: int = 0, *, now: float = 100.0, replicas: int = 3, **kw: Any) -> Context:
    return Context(ordinal=ordinal, replicas=replicas, now=now, started_at=0.0, **kw)


# --- converge ---------------------------------------------------------------
@given(converge_states, converge_states, converge_states)
def test_converge_merge_is_a_semilattice(
    a: dict[str, Any], b: dict[str, Any], c: dict[str, Any]
) -> None:
    assert merge(a, b) == merge(b, a)
    assert merge(merge(a, b), c) == merge(a, merge(b, c))
    assert merge(a, a) == a
    assert merge(a, b)["generation"] == max(a["generation"], b["generation"])
    assert merge(a, b) in (a, b)


def test_converge_respond_and_react_keep_the_newer_generation() -> None:
    old = {"generation": 1, "target": "a"}
    new = {"generation": 2, "target": "b"}
    assert Converge().respond(old, new, ctx()) == new
    assert Converge().react(new, old, ctx()) == new


@pytest.mark.parametrize(
    "raw",
    [
        [],
        {"generation": -1, "target": 1},
        {"generation": "1", "target": 1},
        {"generation": True, "target": 1},
        {"generation": 1},
        {"generation": 1, "target": 1, "extra": 2},
        {"generation": 1, "target": "x" * 20000},
    ],
)
def test_converge_validate_rejects(raw: Any) -> None:
    with pytest.raises(InvalidState):
        Converge().validate(raw)


# --- token --------------------------------------------------------------------
SETTINGS = Settings(
    interval=1.0, token_hold=5.0, token_loss_timeout=30.0, token_stagger=2.0, token_lease=3.0
)


def holder(epoch: list[int], since: float = 0.0) -> dict[str, Any]:
    return Token().validate(
        {
            "holding": True,
            "epoch": epoch,
            "since": since,
            "seenAt": since,
            "offer": None,
            "origin": [1, 0],
            "acked": [1, 0],
        }
    )


def test_token_hand_off_round_trip() -> None:
    token = Token()
    giver = holder([3, 0], since=0.0)
    acting: dict[str, Any] = {"settings": SETTINGS, "peer": 1, "acting": True, "quiet": 0.0}
    # Not yet: the hold time has not passed; and a holder that does not act never hands on.
    assert token.tick(giver, ctx(0, now=4.0, **acting)) == giver
    assert token.tick(giver, ctx(0, now=6.0, **{**acting, "acting": False})) == giver
    offering = token.tick(giver, ctx(0, now=6.0, **acting))
    assert offering["offer"] == {"to": 1, "epoch": [4, 1]}
    assert offering["holding"]
    assert peer_hint(token, offering, ctx(0, replicas=3)) == 1
    assert token.holder_epoch(offering) is None  # an offer made: it acts no more
    receiver = token.initial(ctx(1))
    received = token.respond(receiver, offering, ctx(1, now=6.1, settings=SETTINGS))
    assert received["holding"]
    assert received["epoch"] == [4, 1]
    assert received["origin"] == [1, 0]  # the same chain
    assert received["acked"] == [1, 0]  # a node that vouched for none may vouch for it
    released = token.react(offering, received, ctx(0, now=6.2, settings=SETTINGS))
    assert not released["holding"]
    assert released["epoch"] == [4, 1]
    # A duplicate of the offer changes nothing any more.
    assert token.respond(received, offering, ctx(1, now=7.0, settings=SETTINGS)) == received


def test_token_a_node_vouches_for_one_chain_within_the_guard() -> None:
    token = Token()
    other = {**holder([9, 2]), "origin": [9, 2], "acked": [9, 2]}
    mine = token.validate(
        {
            "holding": False,
            "epoch": [3, 0],
            "since": None,
            "seenAt": 0.0,
            "offer": None,
            "origin": [1, 0],
            "acked": [1, 0],
        }
    )
    soon = token.respond(mine, other, ctx(1, settings=SETTINGS, guard_quiet=1.0))
    assert soon["epoch"] == [9, 2]
    assert soon["acked"] == [1, 0]
    assert not token.vouches(soon, other)
    later = token.respond(mine, other, ctx(1, settings=SETTINGS, guard_quiet=4.0))
    assert later["acked"] == [9, 2]
    assert token.vouches(later, other)


def test_token_holder_releases_on_a_newer_epoch() -> None:
    token = Token()
    mine = holder([3, 2])
    theirs = {"holding": False, "epoch": [4, 0], "since": None, "seenAt": 1.0, "offer": None}
    assert not token.respond(mine, theirs, ctx(2))["holding"]
    assert not token.react(mine, theirs, ctx(2))["holding"]
    older = {**theirs, "epoch": [2, 1]}
    assert token.react(mine, older, ctx(2)) == mine


def test_token_regenerates_only_with_a_majority_staggered_by_ordinal() -> None:
    token = Token()
    seen = token.validate(
        {"holding": False, "epoch": [7, 1], "since": None, "seenAt": 10.0, "offer": None}
    )
    quiet: dict[str, Any] = {
        "settings": SETTINGS,
        "confirmed": 1,
        "confirmed_epoch": (9, 2),
        "now": 0.0,  # a wall clock at 0 s: the terms below are the answers'
    }
    lost = token.tick(seen, ctx(0, quiet=30.0, **{**quiet, "confirmed": 0}))
    assert lost["lost"]
    assert not lost["holding"]
    assert not token.tick(lost, ctx(0, quiet=29.0, **quiet))["holding"]
    # node 0 of 3: itself and one peer make a majority; a lone node waits.
    assert not token.tick(lost, ctx(0, quiet=40.0, **{**quiet, "confirmed": 0}))["holding"]
    regenerated = token.tick(lost, ctx(0, quiet=40.0, **quiet))
    assert regenerated["holding"]
    # Two terms above every epoch the answers carried (and any offer or renewal of it).
    assert regenerated["epoch"] == [11, 0]
    assert regenerated["origin"] == [11, 0]  # a new chain
    # ...and at least the wall clock's milliseconds (what was forgotten may be newer).
    now = {**quiet, "now": 1_780_000_000.25}
    assert token.tick(lost, ctx(0, quiet=40.0, **now))["epoch"] == [1_780_000_000_250, 0]
    assert not token.tick(lost, ctx(2, quiet=33.0, **quiet))["holding"]
    assert token.tick(lost, ctx(2, quiet=35.0, **quiet))["epoch"] == [11, 2]
    # Lower ordinals its round trips could not reach are not waited for.
    assert not token.tick(lost, ctx(2, quiet=31.0, lower_down=1, **quiet))["holding"]
    assert token.tick(lost, ctx(2, quiet=33.0, lower_down=1, **quiet))["holding"]
    assert token.tick(lost, ctx(2, quiet=31.0, lower_down=2, **quiet))["epoch"] == [11, 2]
    # of 5 nodes, it takes two peers
    assert not token.tick(lost, ctx(0, replicas=5, quiet=40.0, **quiet))["holding"]
    assert token.tick(lost, ctx(0, replicas=5, quiet=40.0, **{**quiet, "confirmed": 2}))["holding"]


def test_token_first_token_comes_from_node_0() -> None:
    token = Token()
    fresh = token.initial(ctx(0))
    majority: dict[str, Any] = {"settings": SETTINGS, "confirmed": 1}
    assert token.tick(fresh, ctx(0, quiet=2.0, **majority))["holding"] is False
    assert token.tick(fresh, ctx(0, quiet=3.5, settings=SETTINGS))["holding"] is False
    # The first term is the wall clock in milliseconds (ctx: now = 100 s).
    assert token.tick(fresh, ctx(0, quiet=3.5, **majority))["epoch"] == [100_000, 0]
    assert token.tick(fresh, ctx(1, quiet=3.5, **majority))["holding"] is False


def test_token_holder_without_a_majority_gives_up_after_the_loss_timeout() -> None:
    token = Token()
    mine = holder([3, 0])
    assert token.tick(mine, ctx(0, quiet=29.0, settings=SETTINGS)) == mine
    given_up = token.tick(mine, ctx(0, quiet=30.0, settings=SETTINGS))
    assert not given_up["holding"]
    assert given_up["lost"]
    assert token.confirms_loss(given_up)


def test_token_renews_its_epoch_before_acting_again() -> None:
    token = Token()
    mine = holder([3, 0])
    renewed = token.tick(mine, ctx(0, now=0.0, quiet=1.0, renew=True, settings=SETTINGS))
    assert renewed["epoch"] == [4, 0]  # the next term of its own
    assert renewed["holding"]
    assert renewed["since"] == mine["since"]
    # ...at least the wall clock's milliseconds: the order holders began to act.
    later = token.tick(mine, ctx(0, now=1_780_000_000.0, quiet=1.0, renew=True, settings=SETTINGS))
    assert later["epoch"] == [1_780_000_000_000, 0]
    assert later["origin"] == mine["origin"]  # the same chain


@pytest.mark.parametrize(
    "raw",
    [
        {"holding": "yes", "epoch": None, "since": None, "seenAt": 0, "offer": None},
        {"holding": True, "epoch": None, "since": 1.0, "seenAt": 0, "offer": None},
        {"holding": False, "epoch": [1], "since": None, "seenAt": 0, "offer": None},
        {"holding": False, "epoch": [1, -1], "since": None, "seenAt": 0, "offer": None},
        {"holding": False, "epoch": None, "since": None, "seenAt": "x", "offer": None},
        {"holding": False, "epoch": None, "since": None, "seenAt": 0, "offer": {"to": 1}},
        {"holding": False, "epoch": None, "since": None, "seenAt": 0, "bogus": 1},
        "token",
    ],
)
def test_token_validate_rejects(raw: Any) -> None:
    with pytest.raises(InvalidState):
        Token().validate(raw)


# --- custom behaviours ---------------------------------------------------------
def test_load_builtin_and_custom_behaviours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    assert load_behavior("converge").name == "converge"
    assert load_behavior("token").name == "token"
    custom = load_behavior("python:custom_behavior_example:MaxCounter")
    assert custom.respond({"n": 1}, {"n": 4}, ctx()) == {"n": 4}
    sys.modules.pop("custom_behavior_example", None)


@pytest.mark.parametrize(
    "spec",
    [
        "gossip",
        "python:nonexistent_module_xyz:Class",
        "python:custom_behavior_example",
        "python:custom_behavior_example:Missing",
        "python:custom_behavior_example:NotABehavior",
    ],
)
def test_load_behaviour_errors_are_clear(spec: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    with pytest.raises(BehaviorLoadError):
        load_behavior(spec)


# --- topology and backoff ------------------------------------------------------
def test_ring_skips_up_to_k_unreachable_successors_then_probes_again() -> None:
    picker = PeerPicker("ring", 1, ring_skip=2)
    assert picker.pick(5) == 2
    picker.record(False)
    assert picker.pick(5) == 3
    picker.record(False)
    assert picker.pick(5) == 4
    picker.record(False)  # k = 2 exhausted: back to the direct successor
    assert picker.pick(5) == 2
    picker.record(False)
    assert picker.pick(5) == 3
    for _ in range(5):
        picker.record(True)
    assert picker.pick(5) == 2  # probing the direct successor again
    assert PeerPicker("ring", 4, ring_skip=2).pick(5) == 0
    assert PeerPicker("ring", 0).pick(1) is None


@given(st.integers(2, 50), st.data())
def test_mesh_and_star_pick_another_node(replicas: int, data: st.DataObject) -> None:
    ordinal = data.draw(st.integers(0, replicas - 1))
    rng = random.Random(data.draw(st.integers()))
    mesh = PeerPicker("mesh", ordinal, rng=rng)
    picks = {mesh.pick(replicas) for _ in range(20)}
    assert all(p is not None and 0 <= p < replicas and p != ordinal for p in picks)
    star = PeerPicker("star", ordinal, rng=rng).pick(replicas)
    if ordinal:
        assert star == 0
    else:
        assert star is not None
        assert 1 <= star < replicas


@given(st.floats(0.01, 5), st.floats(0.01, 60), st.integers(1, 100), st.integers())
def test_backoff_grows_jittered_and_capped(
    base: float, cap: float, failures: int, seed: int
) -> None:
    backoff = Backoff(base, cap, random.Random(seed))
    delays = [backoff.next_delay() for _ in range(failures)]
    for i, delay in enumerate(delays):
        nominal = min(max(cap, base), base * 2.0 ** min(i, 62))
        assert nominal / 2 <= delay <= nominal
    backoff.reset()
    assert backoff.next_delay() <= base
