"""Properties of the built-in behaviours in a faulty in-memory loop (DESIGN §4).

The token's are in test_token_safety.py."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from reactive_node.behaviors import Converge, State
from reactive_node.core.contract import MAX_STATE_INT
from reactive_node.core.simulation import Faults, SimNode, Simulation

faults = st.builds(
    Faults,
    loss=st.floats(0, 0.3),
    duplicate=st.floats(0, 0.2),
    late=st.floats(0, 0.1),
)
BIG = MAX_STATE_INT
restarts = st.lists(st.tuples(st.floats(0, 60), st.integers(0, 100)), max_size=6)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 7),
    topology=st.sampled_from(["ring", "mesh", "star"]),
    fault=faults,
    crashes=restarts,
    injections=st.lists(
        # Any value a target may carry: integers within the state's bounds (the
        # codec refuses others, for an injection as for any round trip).
        st.tuples(st.floats(0, 60), st.integers(0, 100), st.integers(-BIG, BIG)),
        min_size=1,
        max_size=5,
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
