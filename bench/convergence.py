"""Convergence rounds of the converge behaviour, by simulation with the node's own code.

The simulation uses the very `Converge` behaviour and `PeerPicker` the node
runs; only the network is replaced. Time moves in synchronous rounds: in a
round every node initiates one round trip to the peer its picker chooses, and
every answer and every state a responder adopts is computed from the states
all nodes held at the start of the round. News therefore travels at most one
hop per round in each direction of a round trip, which is the conservative
model (in the real loop, nodes are not in lock-step and news can travel
further within one interval).

A new target (generation + 1) is injected into node 0 by a round trip, as the
operator and `reactive-loop set-target` do, and we count the rounds until
every node holds it.

Ring runs use an exact shortcut: a ring's peers never change, and converge is
deterministic and ignores the clock, so a round trip whose two ends did not
change in the previous round would compute what it computed then (nothing):
only round trips touching a changed node are evaluated. Mesh runs evaluate
every round trip.

    python bench/convergence.py [--json] [--plot bench/results/convergence.png]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reactive_node.behaviors import Context, Converge, State
from reactive_node.core.topology import PeerPicker, TopologyName

SIZES = (10, 30, 100, 300, 1000, 3000, 10_000)
MESH_SEEDS = 5


def _context(ordinal: int, replicas: int, now: float) -> Context:
    return Context(ordinal=ordinal, replicas=replicas, now=now, started_at=0.0)


def rounds_to_converge(
    n: int, topology: TopologyName, seed: int, max_rounds: int | None = None
) -> int:
    """Rounds until every node of an `n`-node loop holds a target injected at node 0."""
    behavior = Converge()
    rng = random.Random(seed)
    pickers = [PeerPicker(topology, i, rng=random.Random(rng.random())) for i in range(n)]
    live: list[State] = [behavior.initial(_context(i, n, 0.0)) for i in range(n)]
    injected = {"generation": 1, "target": {"seed": seed}}
    live[0] = behavior.respond(live[0], injected, _context(0, n, 0.0))
    want = live[0]

    def holds(state: State) -> bool:
        return bool(behavior.summary(state)["generation"] == want["generation"])

    done = sum(1 for s in live if holds(s))
    ring_peers: list[int] = []
    predecessors: list[list[int]] = [[] for _ in range(n)]
    if topology == "ring":
        for i, picker in enumerate(pickers):
            p = picker.pick(n)
            assert p is not None
            ring_peers.append(p)
            predecessors[p].append(i)
    changed: set[int] = set(range(n))
    limit = max_rounds if max_rounds is not None else 4 * n + 100
    rounds = 0
    while done < n:
        rounds += 1
        if rounds > limit:
            raise RuntimeError(f"{topology} n={n} did not converge in {limit} rounds")
        snapshot = list(live)
        if topology == "ring":
            initiators = sorted(changed | {q for c in changed for q in predecessors[c]})
        else:
            initiators = list(range(n))
        changed = set()
        now = float(rounds)
        for i in initiators:
            p = ring_peers[i] if topology == "ring" else pickers[i].pick(n)
            if p is None:
                continue
            ctx_p = _context(p, n, now)
            # The responder adopts what it makes of the initiator's start-of-round state...
            before_p = live[p]
            live[p] = behavior.respond(before_p, snapshot[i], ctx_p)
            # ...and the answer the initiator reacts to is made from start-of-round states.
            answer = behavior.respond(snapshot[p], snapshot[i], ctx_p)
            before_i = live[i]
            live[i] = behavior.react(before_i, answer, _context(i, n, now))
            for node, before in ((p, before_p), (i, before_i)):
                if live[node] is not before and live[node] != before:
                    changed.add(node)
                    done += int(holds(live[node])) - int(holds(before))
    return rounds


def measure(sizes: Sequence[int], seeds: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for n in sizes:
        log2n = math.log2(n)
        started = time.perf_counter()
        mesh = [rounds_to_converge(n, "mesh", seed) for seed in range(seeds)]
        ring = rounds_to_converge(n, "ring", 0)
        rows.append(
            {
                "n": n,
                "log2_n": round(log2n, 3),
                "mesh_rounds_mean": round(sum(mesh) / len(mesh), 2),
                "mesh_rounds_max": max(mesh),
                "mesh_goal": round(1.2 * log2n + 2, 2),
                "mesh_ok": max(mesh) <= 1.2 * log2n + 2,
                "ring_rounds": ring,
                "ring_goal": math.ceil(n / 2) + 1,
                "ring_ok": ring <= math.ceil(n / 2) + 1,
                "seconds": round(time.perf_counter() - started, 2),
            }
        )
        print(f"n={n}: {rows[-1]}", file=sys.stderr)
    return rows


def plot(rows: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["n"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    left.plot(n, [r["mesh_rounds_mean"] for r in rows], "o-", label="mesh (mean of seeds)")
    left.plot(n, [r["mesh_rounds_max"] for r in rows], "s--", label="mesh (worst seed)")
    left.plot(n, [r["log2_n"] for r in rows], ":", label="log2 N")
    left.plot(n, [r["mesh_goal"] for r in rows], "-", color="grey", label="goal 1.2·log2 N + 2")
    left.set_xscale("log")
    left.set_xlabel("nodes N")
    left.set_ylabel("rounds to converge")
    left.set_title("mesh (random peer)")
    left.legend()
    right.plot(n, [r["ring_rounds"] for r in rows], "o-", label="ring")
    right.plot(n, [r["ring_goal"] for r in rows], "-", color="grey", label="goal ⌈N/2⌉ + 1")
    right.plot(n, [r["log2_n"] for r in rows], ":", label="log2 N")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("nodes N")
    right.set_title("ring (successor)")
    right.legend()
    fig.suptitle("converge: rounds until every node holds a new target (synchronous rounds)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--seeds", type=int, default=MESH_SEEDS, help="mesh runs per size")
    parser.add_argument("--plot", type=Path, default=Path("bench/results/convergence.png"))
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    if any(n < 2 for n in args.sizes) or args.seeds < 1:
        parser.error("sizes must be >= 2 and seeds >= 1")
    rows = measure(args.sizes, args.seeds)
    plot(rows, args.plot)
    if args.json:
        print(json.dumps({"rows": rows, "plot": str(args.plot)}, indent=2))
    else:
        for r in rows:
            print(
                f"N={r['n']:>6}  log2N={r['log2_n']:>6}  mesh mean {r['mesh_rounds_mean']:>5} "
                f"max {r['mesh_rounds_max']:>3} (goal {r['mesh_goal']})  "
                f"ring {r['ring_rounds']:>5} (goal {r['ring_goal']})"
            )
        print(f"plot: {args.plot}")
    return 0 if all(r["mesh_ok"] and r["ring_ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
