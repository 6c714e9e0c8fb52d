"""Target propagation in the project's simulation: from injection until every node holds it.

`reactive_node.core.simulation.Simulation` runs N nodes of the real protocol core
(`NodeCore`: peer choice, stale check, validation, the converge behaviour,
backoff) over a simulated network (each message 1 to 200 ms, no loss), with
the node's default timings unless told otherwise (interval 1 s, round-trip
timeout 0.5 s). Unlike `bench/convergence.py` (synchronous rounds), nodes
are not in lock-step: each loops every interval after its last round trip
ended, from a random phase, as node processes do.

Each run: the loop runs `--warmup` intervals, a new target is injected into
node 0 by a round trip from the operator (`Simulation.inject`), then the
simulation runs until every node holds it, reporting

* simulated time from the injection until the last node adopted it, in
  seconds and in intervals, and when 50 % and 90 % of the nodes held it;
* rounds: round trips the loop initiated in that time, divided by N (how
  many loops each node made on average; comparable to the synchronous rounds
  of `bench/convergence.py` and to the goals in bench/README.md);
* the wall-clock time of the simulation itself (building it, the warm-up,
  the propagation) and per simulated round trip.

Every run is bounded by `--max-intervals` of simulated time after the
injection and `--max-wall` seconds of wall-clock time; a run stopped by a
bound reports how far the target got. In a ring the holders form one arc
around node 0 that grows by push (forward: a node's successor adopts what
it sends) and by pull (backward: a node adopts its successor's answer), so
the run also reports each front's speed in hops per interval and the time a
full propagation takes at those speeds, `(N - 1) / (forward + backward)`.

Each (topology, N) cell runs `--seeds` seeds, fewer when the cell has used
`--cell-wall` seconds (always at least one).

    python bench/propagation_sim.py [--sizes 5 10 20 100 1000 10000] \\
        [--topologies ring mesh star] [--out bench/results/propagation_sim.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from reactive_node.behaviors import Converge, Settings, State
from reactive_node.core.simulation import SimNode, Simulation
from reactive_node.core.topology import TOPOLOGIES, TopologyName

SIZES = (5, 10, 20, 100, 1000, 10_000)
DEFAULT_TOPOLOGIES: tuple[TopologyName, ...] = ("ring", "mesh", "star")
GENERATION = 1
STEP_INTERVALS = 0.25
"""The simulation runs in slices this long between checks of the bounds."""


@dataclass
class Run:
    """One propagation: a loop of `n` nodes, one seed."""

    topology: str
    n: int
    seed: int
    complete: bool
    stopped_by: str | None
    """None, or the bound that ended an incomplete run: "intervals" or "wall"."""
    holders: int
    sim_seconds: float
    """Injection to the last adoption (complete), or to the bound (incomplete)."""
    intervals: float
    rounds: float
    """Round trips initiated in that time, per node."""
    reached_50_intervals: float | None
    reached_90_intervals: float | None
    round_trips: int
    wall_build_s: float
    wall_warmup_s: float
    wall_propagation_s: float
    us_per_round_trip: float
    ring: dict[str, Any] = field(default_factory=dict)


def _quantile_time(arrivals: Sequence[float], n: int, share: float) -> float | None:
    """When `share` of the `n` nodes held the target (None if they never did)."""
    need = math.ceil(share * n)
    ordered = sorted(arrivals)
    return ordered[need - 1] if len(ordered) >= need else None


def ring_fronts(arrivals: dict[int, float], n: int, inject_at: float) -> dict[str, Any]:
    """The two fronts of a ring's arc of holders around node 0, and their speeds.

    Forward (push) front: nodes 1, 2, … ; backward (pull): n-1, n-2, … Each
    front's speed is its hops over the time of its farthest adoption."""
    forward = 0
    while forward + 1 < n and forward + 1 in arrivals:
        forward += 1
    backward = 0
    while backward + 1 < n - forward and (n - 1 - backward) in arrivals:
        backward += 1
    if forward + backward >= n - 1 and arrivals:
        # Complete: the last node to adopt is where the fronts met; it belongs
        # to neither (either may have brought it).
        last = max(arrivals, key=lambda o: arrivals[o])
        forward, backward = max(last - 1, 0), max(n - 1 - last, 0)

    def speed(hops: int, farthest: int) -> float | None:
        if hops == 0:
            return None
        elapsed = arrivals[farthest] - inject_at
        return hops / elapsed if elapsed > 0 else None

    v_forward = speed(forward, forward)
    v_backward = speed(backward, (n - backward) % n)
    full = (
        (n - 1) / (v_forward + v_backward)
        if v_forward is not None and v_backward is not None
        else None
    )
    return {
        "forward_hops": forward,
        "backward_hops": backward,
        "forward_hops_per_interval": None if v_forward is None else round(v_forward, 3),
        "backward_hops_per_interval": None if v_backward is None else round(v_backward, 3),
        "full_propagation_intervals_at_these_speeds": None if full is None else round(full, 1),
    }


def propagate(
    n: int,
    topology: TopologyName,
    seed: int,
    *,
    interval: float,
    warmup: float,
    max_intervals: float,
    max_wall: float,
) -> Run:
    """Inject a target into node 0 of an `n`-node loop and run until all hold it."""
    started = time.perf_counter()
    sim = Simulation(Converge(), n, topology, seed=seed, settings=Settings(interval=interval))
    built = time.perf_counter()
    sim.run_until(warmup * interval)
    warmed = time.perf_counter()

    arrivals: dict[int, float] = {}
    done: list[int] = []  # the round-trip count when the last node adopted

    def adopted(node: SimNode, old: State, new: State) -> None:
        if new["generation"] >= GENERATION and node.ordinal not in arrivals:
            arrivals[node.ordinal] = sim.now
            if len(arrivals) == n:
                done.append(sim.requests)

    sim.on_change = adopted
    inject_at = sim.now
    requests_before = sim.requests
    sim.inject(0, {"generation": GENERATION, "target": {"seed": seed, "n": n}})
    stopped_by: str | None = None
    while len(arrivals) < n:
        if sim.now - inject_at >= max_intervals * interval:
            stopped_by = "intervals"
            break
        if time.perf_counter() - warmed >= max_wall:
            stopped_by = "wall"
            break
        sim.run_until(sim.now + STEP_INTERVALS * interval)
    finished = time.perf_counter()

    complete = len(arrivals) == n
    end = max(arrivals.values()) if complete else sim.now
    requests_after = done[0] if done else sim.requests
    elapsed = end - inject_at
    times = [t - inject_at for t in arrivals.values()]
    q50, q90 = _quantile_time(times, n, 0.5), _quantile_time(times, n, 0.9)
    # Round trips of the whole run, warm-up included, for the cost per round trip.
    simulated = sim.requests
    return Run(
        topology=topology,
        n=n,
        seed=seed,
        complete=complete,
        stopped_by=stopped_by,
        holders=len(arrivals),
        sim_seconds=round(elapsed, 3),
        intervals=round(elapsed / interval, 2),
        rounds=round((requests_after - requests_before) / n, 2),
        reached_50_intervals=None if q50 is None else round(q50 / interval, 2),
        reached_90_intervals=None if q90 is None else round(q90 / interval, 2),
        round_trips=simulated,
        wall_build_s=round(built - started, 2),
        wall_warmup_s=round(warmed - built, 2),
        wall_propagation_s=round(finished - warmed, 2),
        us_per_round_trip=round((finished - built) / max(simulated, 1) * 1e6, 1),
        ring=ring_fronts(arrivals, n, inject_at) if topology == "ring" else {},
    )


def goals(n: int) -> dict[str, float]:
    """The convergence goals of bench/README.md, in rounds."""
    return {"mesh": round(1.2 * math.log2(n) + 2, 2), "ring": math.ceil(n / 2) + 1}


def summarize(runs: Sequence[Run]) -> dict[str, Any]:
    """One row per (topology, N) from its seeds."""
    first = runs[0]
    complete = [r for r in runs if r.complete]
    row: dict[str, Any] = {
        "topology": first.topology,
        "n": first.n,
        "seeds": len(runs),
        "complete": len(complete),
    }
    if complete:
        intervals = [r.intervals for r in complete]
        rounds = [r.rounds for r in complete]
        row |= {
            "intervals_median": round(statistics.median(intervals), 2),
            "intervals_max": max(intervals),
            "rounds_median": round(statistics.median(rounds), 2),
            "rounds_max": max(rounds),
        }
    incomplete = [r for r in runs if not r.complete]
    if incomplete:
        r = incomplete[0]
        row["incomplete"] = {
            "stopped_by": r.stopped_by,
            "holders": r.holders,
            "after_intervals": r.intervals,
            "rounds_per_interval": round(r.rounds / r.intervals, 3) if r.intervals else None,
            **r.ring,
        }
        full = r.ring.get("full_propagation_intervals_at_these_speeds")
        if full is not None and r.intervals:
            row["incomplete"]["full_propagation_rounds_at_these_speeds"] = round(
                full * r.rounds / r.intervals, 1
            )
    goal = goals(first.n).get(first.topology)
    if goal is not None:
        row["goal_rounds"] = goal
        if not incomplete:
            row["goal_met"] = row["rounds_max"] <= goal
        else:  # judged, if at all, at the speeds the bounded run measured
            at_speeds = row["incomplete"].get("full_propagation_rounds_at_these_speeds")
            row["goal_met"] = None if at_speeds is None else at_speeds <= goal
    if first.topology == "ring":
        speeds = [r.ring for r in runs if r.ring.get("forward_hops_per_interval") is not None]
        if speeds:
            row["ring_forward_hops_per_interval"] = round(
                statistics.median(s["forward_hops_per_interval"] for s in speeds), 3
            )
            if all(s.get("backward_hops_per_interval") is not None for s in speeds):
                row["ring_backward_hops_per_interval"] = round(
                    statistics.median(s["backward_hops_per_interval"] for s in speeds), 3
                )
    row["wall_seconds_per_run_median"] = round(
        statistics.median(r.wall_build_s + r.wall_warmup_s + r.wall_propagation_s for r in runs),
        1,
    )
    row["us_per_round_trip_median"] = round(statistics.median(r.us_per_round_trip for r in runs))
    return row


def measure(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[Run]]:
    rows: list[dict[str, Any]] = []
    runs: list[Run] = []
    for topology in args.topologies:
        for n in args.sizes:
            cell: list[Run] = []
            cell_started = time.perf_counter()
            max_intervals = args.max_intervals if args.max_intervals else n + 50
            for seed in range(args.seeds):
                if cell and time.perf_counter() - cell_started >= args.cell_wall:
                    break
                run = propagate(
                    n,
                    topology,
                    seed,
                    interval=args.interval,
                    warmup=args.warmup,
                    max_intervals=max_intervals,
                    max_wall=args.max_wall,
                )
                print(f"{topology} n={n} seed={seed}: {asdict(run)}", file=sys.stderr)
                cell.append(run)
                if not run.complete:
                    break  # the next seed would stop at the same bound
            runs.extend(cell)
            rows.append(summarize(cell))
    return rows, runs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument(
        "--topologies", nargs="+", choices=TOPOLOGIES, default=list(DEFAULT_TOPOLOGIES)
    )
    parser.add_argument("--seeds", type=int, default=5, help="runs per cell (default 5)")
    parser.add_argument(
        "--cell-wall", type=float, default=120.0, help="no new seed after this many s in a cell"
    )
    parser.add_argument("--interval", type=float, default=1.0, help="node interval, s")
    parser.add_argument("--warmup", type=float, default=2.0, help="intervals before injecting")
    parser.add_argument(
        "--max-intervals", type=float, help="bound per run, simulated (default N + 50)"
    )
    parser.add_argument("--max-wall", type=float, default=600.0, help="bound per run, wall s")
    parser.add_argument("--out", type=Path, help="write the results as JSON to this file")
    args = parser.parse_args(argv)
    if any(n < 2 for n in args.sizes) or args.seeds < 1 or args.interval <= 0:
        parser.error("sizes must be >= 2, seeds >= 1, interval > 0")
    started = time.perf_counter()
    rows, runs = measure(args)
    result = {
        "script": "bench/propagation_sim.py",
        "argv": list(sys.argv[1:] if argv is None else argv),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "wall_seconds": round(time.perf_counter() - started, 1),
        "settings": {
            "interval": args.interval,
            "timeout": 0.5,
            "one_way_delay_s": [0.001, 0.2],
            "warmup_intervals": args.warmup,
        },
        "rows": rows,
        "runs": [asdict(r) for r in runs],
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    for r in rows:
        done = (
            f"intervals median {r['intervals_median']} max {r['intervals_max']}, "
            f"rounds median {r['rounds_median']} max {r['rounds_max']}"
            if r["complete"]
            else f"incomplete: {r['incomplete']}"
        )
        goal = ""
        if "goal_rounds" in r:
            verdict = {True: "met", False: "MISSED", None: "not judged"}[r["goal_met"]]
            if "incomplete" in r and r["goal_met"] is not None:
                verdict += " at the measured speeds"
            goal = f" (goal {r['goal_rounds']} rounds: {verdict})"
        print(
            f"{r['topology']:>4} N={r['n']:>6} seeds {r['complete']}/{r['seeds']}: {done}"
            f"{goal}; wall {r['wall_seconds_per_run_median']} s/run"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
