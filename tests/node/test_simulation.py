"""Properties of the built-in behaviours in a faulty in-memory loop (DESIGN §4)."""

from __future__ import annotations

import dataclasses
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st
from reactive_node.behaviors import Converge, Settings, State, Token
from reactive_node.simulation import Faults, SimNode, Simulation

faults = st.builds(
    Faults,
    loss=st.floats(0, 0.3),
    duplicate=st.floats(0, 0.2),
    late=st.floats(0, 0.1),
)
restarts = st.lists(st.tuples(st.floats(0, 60), st.integers(0, 100)), max_size=6)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 7),
    topology=st.sampled_from(["ring", "mesh", "star"]),
    fault=faults,
    crashes=restarts,
    injections=st.lists(
        st.tuples(st.floats(0, 60), st.integers(0, 100), st.integers()), min_size=1, max_size=5
    ),
    seed=st.integers(0, 2**32),
)
def test_converge_never_regresses_and_converges_once_healthy(
    n: int,
    topology: str,
    fault: Faults,
    crashes: list[tuple[float, int]],
    injections: list[tuple[float, int, int]],
    seed: int,
) -> None:
    sim = Simulation(Converge(), n, topology, seed=seed)  # type: ignore[arg-type]
    targets: dict[int, object] = {0: None}
    violations: list[str] = []

    def check(node: SimNode, old: State, new: State) -> None:
        if new["generation"] < old["generation"]:
            violations.append(f"node {node.ordinal} regressed {old} -> {new}")
        if targets.get(new["generation"], object()) != new["target"]:
            violations.append(f"node {node.ordinal} adopted a foreign target {new}")

    sim.on_change = check
    sim.faults = fault
    events = sorted(
        [(t, "crash", o % n, 0) for t, o in crashes]
        + [(t, "inject", o % n, v) for t, o, v in injections]
    )
    generation = 0
    for t, kind, ordinal, value in events:
        sim.run_until(t)
        if kind == "crash":
            sim.restart(ordinal)
        else:
            generation += 1
            targets[generation] = {"value": value, "generation": generation}
            sim.inject(ordinal, {"generation": generation, "target": targets[generation]})
    sim.run_until(60)
    assert not violations, violations[:3]

    # Healthy network from now on: everyone reaches the newest generation.
    sim.faults = Faults()
    sim.run_until(60 + 4.0 + 2 * n + 5)  # max backoff, then about a ring's worth of rounds
    assert not violations, violations[:3]
    assert [s["generation"] for s in sim.states()] == [generation] * n
    assert all(s["target"] == targets[generation] for s in sim.states())


TOKEN_SETTINGS = Settings(interval=1.0, token_hold=3.0, token_loss_timeout=30.0, token_stagger=2.0)


def _assert_unique_epochs(sim: Simulation) -> None:
    owners: dict[tuple[int, int], int] = {}
    for acquire in sim.acquires:
        owner = owners.setdefault(acquire.epoch, acquire.node)
        assert owner == acquire.node, f"epoch {acquire.epoch} held by {owner} and {acquire.node}"
        assert acquire.epoch[1] == acquire.node, f"epoch {acquire.epoch} names another node"


def _settle_one_holder(sim: Simulation, until: float) -> list[int]:
    """Stop new hand-offs, let the one in flight finish; return the holders."""
    sim.settings = dataclasses.replace(sim.settings, token_hold=1e9)
    sim.faults = Faults()
    sim.run_until(until)
    return [node.ordinal for node in sim.nodes if node.state["holding"]]


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 6),
    fault=faults,
    crashes=restarts,
    seed=st.integers(0, 2**32),
)
def test_token_epochs_unique_and_increasing_at_the_fence(
    n: int, fault: Faults, crashes: list[tuple[float, int]], seed: int
) -> None:
    sim = Simulation(Token(), n, "ring", seed=seed, settings=TOKEN_SETTINGS)
    sim.faults = fault
    for t, ordinal in sorted(crashes):
        sim.run_until(t)
        sim.restart(ordinal % n)
    sim.run_until(90)
    _assert_unique_epochs(sim)
    # The fence: every acquisition it is told of is newer than all before it.
    epochs = [a.epoch for a in sim.acquires]
    assert len(epochs) >= 2, "the token never moved"
    assert all(a < b for a, b in itertools.pairwise(epochs)), epochs
    holders = _settle_one_holder(sim, 90 + 4.0 + 3 * n)
    assert len(holders) == 1, holders
    _assert_unique_epochs(sim)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(3, 6),
    side=st.sets(st.integers(0, 5), min_size=1),
    seed=st.integers(0, 2**32),
)
def test_token_one_holder_after_a_partition_heals(n: int, side: set[int], seed: int) -> None:
    sim = Simulation(Token(), n, "ring", seed=seed, settings=TOKEN_SETTINGS)
    sim.run_until(15)
    cut = frozenset(o % n for o in side)
    if len(cut) == n:
        cut = frozenset(list(cut)[:-1])
    sim.faults = Faults(partition=cut)
    sim.run_until(15 + 60)  # long enough for the cut-off side to regenerate a token
    _assert_unique_epochs(sim)
    sim.faults = Faults()
    sim.run_until(15 + 60 + 40)  # healed: the older token meets news of the newer one
    holders = _settle_one_holder(sim, 15 + 60 + 40 + 4.0 + 3 * n)
    assert len(holders) == 1, holders
    _assert_unique_epochs(sim)
