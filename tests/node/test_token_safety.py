"""The token's safety and liveness (issue 10 §2) over long random histories.

The simulation drives the node's own rules (behaviour and protocol core) with
loss, duplication, late delivery (so reordering), restarts (with the stored
state, or without it: a deleted pod), graceful stops (SIGTERM: a last round
trip), process pauses, partitions, clock-rate
drift between nodes and token webhook calls that take up to their timeout,
and checks at every event:

* at most one node *acts* as the holder (its lease is fresh) at any instant;
* the epochs of acquisitions, in the order they fire and in the order a
  webhook receiver hears them (a fence), strictly increase, and each names
  the node that acquired it;
* no node regenerates the token while a running holder acts on a side of
  the network that holds a majority;
* once a partition heals, one node acts again within the issue's bound,
  `lossTimeout + 2·interval` (the race history of docs/node.md, "Known limits
  of the token", ends within it too); once any mix of faults stops, within
  `heal_bound`: `lossTimeout + 2·interval + guard + maxBackoff` (a node may be
  asleep in its longest backoff, a restarted node keeps its whole guard);
* a holder stopped by SIGTERM hands the token on in its last round trip, and
  a successor acts within a few intervals, not after the loss timeout.
"""

from __future__ import annotations

import dataclasses
import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reactive_node.behaviors import Settings, Token
from reactive_node.core.behaviors.base import default_lease
from reactive_node.core.simulation import Faults, Simulation

INTERVAL = 1.0
MAX_BACKOFF = 4.0
"""The simulation's backoff cap (its default)."""
SETTINGS = Settings(
    interval=INTERVAL,
    token_hold=3.0,
    token_loss_timeout=12.0,
    token_stagger=2.0,
    token_lease=3.0,
)
WEBHOOK = 2.0
"""The token webhook's timeout: each acquire call takes up to this long."""
DRIFT = 0.1
"""Clock-rate drift allowed between nodes (each runs at 1 ± 10 %): the drift
factor of the guard, 1.25 > 1.1 / 0.9."""

fault_mix = st.builds(
    Faults,
    loss=st.floats(0, 0.3),
    duplicate=st.floats(0, 0.2),
    late=st.floats(0, 0.15),
)
Event = tuple[float, str, int, float, frozenset[int]]
events = st.lists(
    st.tuples(
        st.floats(0, 120),
        st.sampled_from(["restart", "wipe", "stop", "pause", "partition", "heal"]),
        st.integers(0, 100),
        st.floats(0.5, 20),
        st.frozensets(st.integers(0, 6), min_size=1, max_size=4),
    ),
    max_size=10,
)


def _settings(n: int) -> Settings:
    """The node's default lease for a loop of `n` (3 to 5 intervals here)."""
    return dataclasses.replace(SETTINGS, token_lease=default_lease(INTERVAL, n))


def issue_bound(settings: Settings) -> float:
    """Issue 10's bound after a partition heals: `lossTimeout + 2·interval`."""
    return settings.token_loss_timeout + 2 * settings.interval


def heal_bound(settings: Settings) -> float:
    """Seconds after the faults stop within which one node acts (docs/node.md)."""
    return settings.token_loss_timeout + 2 * settings.interval + settings.token_guard + MAX_BACKOFF


def _until_one_acts(sim: Simulation, healed: float) -> float:
    """Run on a healthy network until one node acts, and has since `healed` or
    later stays acting; the seconds it took (stops at twice the bound)."""
    # Keep the token where it is once it acts, so "one acting holder" is a state.
    sim.settings = dataclasses.replace(sim.settings, token_hold=1e9)
    give_up = healed + 2 * heal_bound(sim.settings)
    t = healed
    while t < give_up:
        acting = sim.acting()
        if len(acting) == 1 and sim.acting_since.get(acting[0], t) <= t:
            return t - healed
        t = min(give_up, t + 0.05)
        sim.run_until(t)
    return t - healed


def _apply(
    sim: Simulation, n: int, kind: str, ordinal: int, seconds: float, side: frozenset[int]
) -> None:
    if kind in ("restart", "wipe"):
        # Without its state (a deleted pod) even when no other node remembers an
        # epoch: a new chain's term is the wall clock's, above every forgotten one.
        sim.restart(ordinal % n, wipe=kind == "wipe")
    elif kind == "stop":
        sim.stop(ordinal % n, grace=min(seconds, 3.0))
    elif kind == "pause":
        sim.pause(ordinal % n, seconds)
    elif kind == "partition":
        cut = frozenset(o % n for o in side)
        sim.faults = dataclasses.replace(sim.faults, partition=cut if len(cut) < n else None)
    else:
        sim.faults = dataclasses.replace(sim.faults, partition=None)


def _check_safety(sim: Simulation) -> None:
    assert not sim.overlaps, f"two acting holders: {sim.overlaps[:3]}"
    epochs = [a.epoch for a in sim.acquires]
    assert all(a < b for a, b in itertools.pairwise(epochs)), epochs
    heard = sim.fence_epochs()
    assert all(a < b for a, b in itertools.pairwise(heard)), f"the fence heard {heard}"
    assert all(a.epoch[1] == a.node for a in sim.acquires), sim.acquires
    bad = [r for r in sim.regenerations if r.live_holder is not None]
    assert not bad, f"regenerated while a majority could reach a live holder: {bad[:3]}"


@settings(max_examples=100, deadline=None)
@given(
    n=st.integers(2, 6),
    fault=fault_mix,
    history=events,
    seed=st.integers(0, 2**32),
)
def test_token_is_safe_under_any_history(
    n: int, fault: Faults, history: list[Event], seed: int
) -> None:
    sim = Simulation(
        Token(), n, "ring", seed=seed, settings=_settings(n), drift=DRIFT, webhook_delay=WEBHOOK
    )
    sim.faults = fault
    for at, kind, ordinal, seconds, side in sorted(history, key=lambda e: e[0]):
        sim.run_until(at)
        _apply(sim, n, kind, ordinal, seconds, side)
    sim.run_until(150)
    _check_safety(sim)


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(2, 6),
    fault=fault_mix,
    history=events,
    end=st.floats(20, 130),
    seed=st.integers(0, 2**32),
)
def test_token_one_acting_holder_within_the_bound_once_the_faults_stop(
    n: int, fault: Faults, history: list[Event], end: float, seed: int
) -> None:
    """Any mix of faults until `end` (loss, duplication, late delivery, restarts,
    pauses, partitions, with clock-rate drift throughout), then none."""
    sim = Simulation(Token(), n, "ring", seed=seed, settings=_settings(n), drift=DRIFT)
    sim.faults = fault
    for at, kind, ordinal, seconds, side in sorted(history, key=lambda e: e[0]):
        if at < end:
            sim.run_until(at)
            _apply(sim, n, kind, ordinal, seconds, side)
    sim.run_until(end)
    sim.faults = Faults()
    healed = max(end, *(node.paused_until for node in sim.nodes))
    sim.run_until(healed)
    took = _until_one_acts(sim, healed)
    assert took <= heal_bound(sim.settings), (took, sim.acting(), sim.states())
    _check_safety(sim)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(2, 6),
    side=st.frozensets(st.integers(0, 5), min_size=1),
    cut_at=st.floats(5, 40),
    cut_for=st.floats(1, 60),
    seed=st.integers(0, 2**32),
)
def test_token_one_acting_holder_after_a_partition_heals(
    n: int, side: frozenset[int], cut_at: float, cut_for: float, seed: int
) -> None:
    sim = Simulation(Token(), n, "ring", seed=seed, settings=_settings(n), drift=DRIFT)
    sim.run_until(cut_at)
    cut = frozenset(o % n for o in side)
    sim.faults = Faults(partition=cut if len(cut) < n else frozenset({0}))
    sim.run_until(cut_at + cut_for)
    healed = cut_at + cut_for
    sim.faults = Faults()
    took = _until_one_acts(sim, healed)
    assert took <= issue_bound(sim.settings), (took, sim.acting(), sim.states())
    assert len(sim.acting()) == 1
    _check_safety(sim)


def test_a_race_after_the_heal_ends_within_the_issues_bound() -> None:
    """The history of docs/node.md ("After a heal"): a 3 | 3 split leaves no
    majority; after the heal two nodes regenerate, and the newer token wins.
    The holder of the older one releases when it hears of it and is free at
    once to vouch for the winner (it no longer holds what it vouched for), and
    so, once they hear from it, are its vouchers: the winner acts within
    `lossTimeout + 2·interval`. Before that rule the vouchers of the older
    token could vouch only a guard later (16.5 s here, over the issue's 14 s)."""
    sim = Simulation(Token(), 6, "ring", seed=1969293618, settings=_settings(6), drift=DRIFT)
    sim.run_until(17.271925803867298)
    sim.faults = Faults(partition=frozenset({0, 1, 2}))
    healed = 17.271925803867298 + 42.1238101141661
    sim.run_until(healed)
    sim.faults = Faults()
    took = _until_one_acts(sim, healed)
    after = [r for r in sim.regenerations if r.at >= healed]
    assert len({r.node for r in after}) == 2, after  # a race
    assert after[0].epoch < after[1].epoch  # the later token is the newer
    assert sim.acting() == [after[1].node]
    assert took <= issue_bound(sim.settings)
    _check_safety(sim)


def _acts_newer(sim: Simulation, epoch: tuple[int, int]) -> bool:
    """Whether a node acts on an epoch newer than `epoch` now."""
    return any((sim.nodes[o].core.acting_now() or (0, 0)) > epoch for o in sim.acting())


@pytest.mark.parametrize("n", [3, 5])
@pytest.mark.parametrize("seed", range(5))
def test_a_stopping_holder_hands_the_token_on_instead_of_waiting_for_the_loss(
    n: int, seed: int
) -> None:
    """SIGTERM to the acting holder, a new process (no state) a second later: in
    its last round trip it hands the token on, and a node acts on a newer epoch
    within a few intervals; killed instead (restarted at once without its
    state, the same history otherwise) the token waits out the loss timeout
    and is regenerated."""
    took = {}
    for graceful in (True, False):
        sim = Simulation(Token(), n, "ring", seed=seed, settings=_settings(n), drift=DRIFT)
        sim.settings = dataclasses.replace(sim.settings, token_hold=1e9)
        t = 0.0
        while len(sim.acting()) != 1 and t < 60:
            t += 0.05
            sim.run_until(t)
        (holder,) = sim.acting()
        epoch = sim.nodes[holder].core.acting_now()
        assert epoch is not None
        if graceful:
            sim.stop(holder, grace=1.0)
        else:
            sim.restart(holder, wipe=True)
        stopped = t

        while not _acts_newer(sim, epoch) and t < stopped + 60:
            t += 0.05
            sim.run_until(t)
        took[graceful] = t - stopped
        assert len(sim.acting()) == 1
        assert bool(sim.regenerations[1:]) != graceful, sim.regenerations
        _check_safety(sim)
    loss = SETTINGS.token_loss_timeout
    assert took[True] <= loss / 2 < loss - 2 * INTERVAL <= took[False] < 60, took


def _drawn(seed: int, *, heal: bool, stops: bool = True) -> Simulation:
    """A random history of every fault drawn from `seed`, as the sweeps behind
    docs/node.md drew them. `heal`: the faults stop at a random time and it runs
    until one node acts (else they run on to 150 s, with slow webhook calls)."""
    r = random.Random(seed)
    n = r.randint(2, 6)
    fault = Faults(loss=r.uniform(0, 0.3), duplicate=r.uniform(0, 0.2), late=r.uniform(0, 0.15))
    kinds = ["restart", "wipe", "stop", "pause", "partition", "heal"]
    if not stops:
        kinds.remove("stop")
    history: list[Event] = []
    for _ in range(r.randint(0, 10)):
        at, kind, ordinal = r.uniform(0, 120), r.choice(kinds), r.randint(0, 100)
        seconds = r.uniform(0.5, 20)
        history.append(
            (at, kind, ordinal, seconds, frozenset(r.randint(0, 6) for _ in range(r.randint(1, 4))))
        )
    history.sort(key=lambda e: e[0])
    end = r.uniform(20, 130) if heal else 150.0
    delay = 0.0 if heal else WEBHOOK
    sim = Simulation(
        Token(),
        n,
        "ring",
        seed=r.getrandbits(32),
        settings=_settings(n),
        drift=DRIFT,
        webhook_delay=delay,
    )
    sim.faults = fault
    for at, kind, ordinal, seconds, side in history:
        if at < end:
            sim.run_until(at)
            _apply(sim, n, kind, ordinal, seconds, side)
    sim.run_until(end)
    if heal:
        sim.faults = Faults()
        healed = max(end, *(node.paused_until for node in sim.nodes))
        sim.run_until(healed)
        _until_one_acts(sim, healed)
    return sim


@pytest.mark.parametrize(
    ("seed", "heal", "stops"),
    [
        (761, True, False),  # two of three pods deleted: a chain from older answers
        (102, True, True),  # a voucher forgot the newer chain: the older one went on
        (286, False, True),  # a lease lapsed and renewed while its acquire call was slow
        (1479, False, True),  # a restarted node's call overtook its previous life's
    ],
)
def test_a_fence_hears_epochs_in_order_in_histories_that_once_broke_it(
    seed: int, heal: bool, stops: bool
) -> None:
    """Histories the sweeps found where a fence heard an older epoch after a
    newer one (docs/node.md, "Nodes that forget"), each fixed by a rule: a new
    chain's term, and every acted epoch's renewal, from the wall clock; a
    renewal only once the last acquire call returned; nothing acted on within
    the webhook's timeout after a start."""
    _check_safety(_drawn(seed, heal=heal, stops=stops))


@settings(max_examples=20, deadline=None)
@given(n=st.integers(3, 6), seed=st.integers(0, 2**32))
def test_a_minority_side_never_regenerates(n: int, seed: int) -> None:
    sim = Simulation(Token(), n, "ring", seed=seed, settings=_settings(n), drift=DRIFT)
    sim.run_until(20)
    minority = frozenset(range((n - 1) // 2))
    sim.faults = Faults(partition=minority)
    before = len(sim.regenerations)
    sim.run_until(20 + 5 * SETTINGS.token_loss_timeout)
    assert all(r.node not in minority for r in sim.regenerations[before:])
    assert all(o not in minority for o in sim.acting())
    _check_safety(sim)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(2, 4),
    loss=st.floats(0, 0.1),
    faults=st.lists(
        st.tuples(st.floats(3, 20), st.booleans(), st.booleans(), st.integers(0, 100)),
        max_size=4,
    ),
    seed=st.integers(0, 2**32),
)
def test_a_fence_hears_epochs_in_order_when_the_webhook_is_slower_than_the_hold(
    n: int, loss: float, faults: list[tuple[float, bool, bool, int]], seed: int
) -> None:
    """The token is held for 1 s and each webhook call takes up to its 2 s
    timeout: a holder hands on only once its acquire call returned, so the next
    holder's call never overtakes it (the kind test's failure, stop 16's CI).
    Holders are restarted with and without their stored state (a deleted pod):
    an epoch offered again to a node that lost its state is never told twice."""
    short = dataclasses.replace(_settings(n), token_hold=1.0)
    sim = Simulation(
        Token(), n, "ring", seed=seed, settings=short, drift=0.05, webhook_delay=WEBHOOK
    )
    sim.faults = Faults(loss=loss)
    t = 0.0
    for after, holder, wipe, ordinal in faults:
        t += after
        sim.run_until(t)
        acting = sim.acting()
        sim.restart(acting[0] if holder and acting else ordinal % n, wipe=wipe)
    sim.run_until(t + 40)
    assert len(sim.acquires) >= 3, sim.acquires  # it circulated
    _check_safety(sim)


def test_an_epoch_offered_again_after_a_lost_state_is_not_acquired_twice() -> None:
    """A receiver that accepted an offer and lost its state before the giver saw
    the answer (a pod deleted and recreated) is offered the same epoch again.
    It burns that epoch and acts on its renewal: no epoch is heard twice.
    120 seeded histories of three restarts, the holder's mostly, half of them
    without the stored state (without the burn of an epoch taken from an offer, seed 79 acquired
    one epoch twice)."""
    for seed in range(120):
        rng = random.Random(seed)
        n = rng.choice([2, 3, 4, 5])
        short = dataclasses.replace(_settings(n), token_hold=1.0, token_loss_timeout=6.0)
        sim = Simulation(
            Token(), n, "ring", seed=seed, settings=short, drift=0.05, webhook_delay=WEBHOOK
        )
        sim.faults = Faults(loss=rng.uniform(0, 0.1))
        t = 0.0
        for _ in range(3):
            t += rng.uniform(5, 20)
            sim.run_until(t)
            acting = sim.acting()
            victim = acting[0] if acting and rng.random() < 0.7 else rng.randrange(n)
            sim.restart(victim, wipe=rng.random() < 0.5)
        sim.run_until(t + 30)
        _check_safety(sim)
