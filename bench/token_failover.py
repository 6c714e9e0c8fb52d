"""Token failover: from losing the acting holder until a new acting holder.

Issue 10's goal: at most `lossTimeout + 2·interval`. Two ways to lose it:

* `--kind CONTEXT` — a token loop of `--replicas` on the kind cluster (the
  quickstart's operator), in a scratch namespace; `--trials` times: find the
  acting holder (every node's `GET /v1/state`, read through port-forwards as
  `kubectl rloop` reads them), delete its pod (`kubectl delete pod
  --wait=false`: SIGTERM, a new pod without the old one's state), and poll
  every `--poll` seconds until a node acts as holder on a newer epoch. The
  namespace is deleted at the end.
* `--local` — the same loop as local processes (`reactive-loop run`); the
  holder's process gets `--signal` (KILL: no last round trip; TERM: it hands
  the token on as it stops) and the supervisor starts it again with its
  stored state.

A failover's time is from the fault until the first reading that shows the
new acting holder (so at most `--poll` late). Between trials the loop runs
`--settle` seconds.

    nice -n 19 python bench/token_failover.py --kind kind-reactive-loop [--trials 5]
    nice -n 19 python bench/token_failover.py --local [--trials 10] [--signal TERM]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import secrets
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from kind_bench import kubectl
from propagation_local import LocalLoop, eventually, read_state, spread
from reactive_node.core import contract
from reactive_operator.rloop import kube

INTERVAL = 1.0
HOLD = 5.0
LOSS_TIMEOUT = 10.0
GOAL = LOSS_TIMEOUT + 2 * INTERVAL


def acting(states: dict[str, dict[str, Any] | None]) -> tuple[str, tuple[int, int]] | None:
    """(node, epoch) of the one node acting as holder, None unless exactly one does."""
    found = [
        (name, (int(s["summary"]["epoch"][0]), int(s["summary"]["epoch"][1])))
        for name, s in states.items()
        if s is not None and (s.get("summary") or {}).get("holding")
    ]
    return found[0] if len(found) == 1 else None


def _newer(
    states: Callable[[], dict[str, dict[str, Any] | None]], epoch: tuple[int, int]
) -> tuple[str, tuple[int, int]] | None:
    """The acting holder now if it acts on an epoch newer than `epoch`."""
    found = acting(states())
    return found if found is not None and found[1] > epoch else None


async def _newer_async(
    probe: Callable[[], Awaitable[tuple[str, tuple[int, int]] | None]], epoch: tuple[int, int]
) -> tuple[str, tuple[int, int]] | None:
    found = await probe()
    return found if found is not None and found[1] > epoch else None


def manifest(name: str, replicas: int) -> str:
    return json.dumps(
        {
            "apiVersion": "reactive-loop.dev/v1alpha1",
            "kind": "ReactiveLoop",
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "behavior": "token",
                "topology": "ring",
                "token": {"holdSeconds": HOLD, "lossTimeoutSeconds": LOSS_TIMEOUT},
                "loop": {"interval": INTERVAL, "timeout": INTERVAL / 2, "maxBackoff": 4},
            },
        }
    )


def poll_until(
    probe: Callable[[], Any], timeout: float, what: str, poll: float
) -> tuple[Any, float]:
    """(the probe's first truthy value, when it came on the monotonic clock)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = probe()
        if found:
            return found, time.monotonic()
        time.sleep(poll)
    raise TimeoutError(f"{what}: not within {timeout:g} s")


def run_kind(context: str, replicas: int, trials: int, poll: float, settle: float) -> list[float]:
    namespace = f"rl-failover-{secrets.token_hex(3)}"
    name = "failover"
    kubectl(context, "create", "namespace", namespace)
    cluster = kube.Cluster(context=context, namespace=namespace, timeout=5.0)
    reader = kube.NodeReader(cluster, "port-forward", timeout=2.0)
    names = [f"{name}-{i}" for i in range(replicas)]

    def states() -> dict[str, dict[str, Any] | None]:
        out: dict[str, dict[str, Any] | None] = {}
        for pod in names:
            try:
                out[pod] = reader.get_json(pod, "/v1/state")
            except kube.NodeReadError:
                reader.forget(pod)
                out[pod] = None
        return out

    times: list[float] = []
    try:
        kubectl(context, "apply", "-n", namespace, "-f", "-", stdin=manifest(name, replicas))
        for trial in range(trials):
            holder, _ = poll_until(lambda: acting(states()), 300, "an acting holder", poll)
            pod, epoch = holder
            kubectl(context, "delete", "pod", "-n", namespace, pod, "--wait=false")
            cut = time.monotonic()
            reader.forget(pod)
            newer = functools.partial(_newer, states, epoch)
            new, seen = poll_until(newer, 300, "a new acting holder", poll)
            took = seen - cut
            times.append(took)
            print(f"trial {trial}: {pod} {list(epoch)} deleted; {new[0]} acts on"
                  f" {list(new[1])} after {took:.2f} s", file=sys.stderr)  # fmt: skip
            time.sleep(settle)
    finally:
        reader.close()
        cluster.close()
        kubectl(context, "delete", "namespace", namespace, "--wait=false")
    return times


async def run_local(
    replicas: int, trials: int, poll: float, settle: float, sig: signal.Signals
) -> list[float]:
    times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="rl-failover-") as scratch:
        timings = {
            contract.ENV_TOKEN_HOLD: str(HOLD),
            contract.ENV_TOKEN_LOSS_TIMEOUT: str(LOSS_TIMEOUT),
            contract.ENV_TIMEOUT: str(INTERVAL / 2),
        }
        loop = LocalLoop(replicas, "ring", INTERVAL, Path(scratch), behavior="token", env=timings)
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
                await loop.started(session)

                async def probe() -> tuple[str, tuple[int, int]] | None:
                    found = await asyncio.gather(*(read_state(session, a) for a in loop.addresses))
                    return acting(dict(zip(loop.addresses, found, strict=True)))

                for trial in range(trials):
                    address, epoch = await eventually(probe, "an acting holder", 300)
                    pid = loop.pid_of(address)
                    os.kill(pid, sig)
                    cut = time.monotonic()

                    new = await eventually(
                        functools.partial(_newer_async, probe, epoch), "a new acting holder", 300
                    )
                    took = time.monotonic() - cut
                    times.append(took)
                    print(f"trial {trial}: {address} {list(epoch)} got {sig.name}; {new[0]} acts on"
                          f" {list(new[1])} after {took:.2f} s", file=sys.stderr)  # fmt: skip
                    await asyncio.sleep(settle)
        finally:
            loop.stop()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--kind", metavar="CONTEXT", help="the kind cluster's kubectl context")
    where.add_argument("--local", action="store_true", help="local processes")
    parser.add_argument("--replicas", type=int, default=3, choices=range(2, 10))
    parser.add_argument("--trials", type=int, default=5, choices=range(1, 51))
    parser.add_argument("--poll", type=float, default=0.25)
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--signal", choices=["KILL", "TERM"], default="KILL", help="--local only")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    sig = signal.Signals[f"SIG{args.signal}"]
    if args.kind:
        times = run_kind(args.kind, args.replicas, args.trials, args.poll, args.settle)
    else:
        times = asyncio.run(run_local(args.replicas, args.trials, args.poll, args.settle, sig))
    result = {
        "where": f"kind ({args.kind})" if args.kind else f"local processes ({sig.name})",
        "replicas": args.replicas,
        "interval": INTERVAL,
        "holdSeconds": HOLD,
        "lossTimeoutSeconds": LOSS_TIMEOUT,
        "goalSeconds": GOAL,
        "trials": len(times),
        "seconds": spread(times),
        "withinGoal": sum(1 for t in times if t <= GOAL),
        "ratioToGoal": round(statistics.median(times) / GOAL, 3),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
